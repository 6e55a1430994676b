//! Ranges of a file replaced by pieces, where a later piece cuts what it covers out of earlier
//! ones: the in-memory overlay of planned writes (`source::OverlaySource`) and the replay map
//! of a VHDX log (`vhdx::log`) both keep their pieces this way, so a read finds its pieces
//! with one range lookup.

use std::collections::BTreeMap;

/// A piece that can be cut.
pub(crate) trait Piece: Sized {
    /// Bytes covered.
    fn len(&self) -> u64;
    /// Bytes `from..to` of the piece (both within it).
    fn slice(&self, from: u64, to: u64) -> Self;
}

/// Put `piece` at `at` in `pieces` (start offset -> piece, never overlapping), cutting the
/// parts of earlier pieces it covers. An empty piece changes nothing.
pub(crate) fn put<P: Piece>(pieces: &mut BTreeMap<u64, P>, at: u64, piece: P) {
    let end = at.saturating_add(piece.len());
    if end == at {
        return;
    }
    let before = pieces
        .range(..at)
        .next_back()
        .filter(|(k, p)| k.saturating_add(p.len()) > at)
        .map(|(k, _)| *k);
    let hit: Vec<u64> = before
        .into_iter()
        .chain(pieces.range(at..end).map(|(k, _)| *k))
        .collect();
    for k in hit {
        let Some(old) = pieces.remove(&k) else {
            continue;
        };
        let old_end = k.saturating_add(old.len());
        if k < at {
            pieces.insert(k, old.slice(0, at - k));
        }
        if old_end > end {
            pieces.insert(end, old.slice(end - k, old_end - k));
        }
    }
    pieces.insert(at, piece);
}

/// The pieces that overlap `offset..end`, in order.
pub(crate) fn overlapping<P: Piece>(
    pieces: &BTreeMap<u64, P>,
    offset: u64,
    end: u64,
) -> impl Iterator<Item = (&u64, &P)> {
    let first = pieces
        .range(..offset)
        .next_back()
        .filter(move |(k, p)| k.saturating_add(p.len()) > offset);
    first.into_iter().chain(pieces.range(offset..end))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run of one byte value.
    #[derive(Debug, Clone, PartialEq)]
    struct Run(u8, u64);

    impl Piece for Run {
        fn len(&self) -> u64 {
            self.1
        }
        fn slice(&self, from: u64, to: u64) -> Run {
            Run(self.0, to - from)
        }
    }

    #[test]
    fn later_pieces_cut_earlier_ones() {
        let mut m = BTreeMap::new();
        put(&mut m, 4, Run(2, 16));
        put(&mut m, 8, Run(0, 4));
        put(&mut m, 30, Run(3, 6));
        put(&mut m, 2, Run(4, 3));
        put(&mut m, 50, Run(9, 0));
        let got: Vec<(u64, Run)> = m.iter().map(|(k, p)| (*k, p.clone())).collect();
        assert_eq!(
            got,
            vec![
                (2, Run(4, 3)),
                (5, Run(2, 3)),
                (8, Run(0, 4)),
                (12, Run(2, 8)),
                (30, Run(3, 6))
            ]
        );
        let hit: Vec<u64> = overlapping(&m, 9, 13).map(|(k, _)| *k).collect();
        assert_eq!(hit, vec![8, 12]);
        assert_eq!(overlapping(&m, 20, 30).count(), 0);
    }
}
