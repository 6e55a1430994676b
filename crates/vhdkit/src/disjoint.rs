//! Whether any two of a set of file spans overlap, in bounded memory.
//!
//! A table may point at tens of millions of blocks, and a hostile sparse file can make every one
//! of them allocated, so the blocks cannot all be held and sorted at once. Instead the spans are
//! visited in passes ([`visit_sorted`]): one pass counts them (and is all it takes when they
//! fit the budget); while a range of start offsets holds more spans than the budget, a
//! histogram pass splits it into ranges that each hold at most the budget; each such range is
//! then collected, sorted and handed on in order. The
//! overlap checks ([`find_overlap`], [`each_overlap`]) sweep that order, comparing each span
//! with the one reaching furthest before it. Memory is the budget plus one histogram; the cost
//! is a few passes over the table, and only when it is larger than the budget.

use crate::error::Result;

/// A span of the file `[start, end)` and who uses it (a table index, for messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Span {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// Caller's id (e.g. the table entry's index).
    pub id: u64,
}

/// Spans collected and sorted at a time by default: 24 bytes each, 12 MiB.
pub(crate) const DEFAULT_BUDGET: usize = 512 << 10;
/// Histogram buckets per split: 512 KiB of counters.
const MAX_BUCKETS: usize = 64 << 10;

/// The visitor a pass calls once per span.
pub(crate) type Visit<'v> = dyn FnMut(Span) -> Result<()> + 'v;

/// A source of spans: each call visits every span once, in any order, the same set each time.
pub(crate) trait Spans {
    /// Visit every span.
    fn pass(&mut self, visit: &mut Visit<'_>) -> Result<()>;
}

impl<F> Spans for F
where
    F: FnMut(&mut Visit<'_>) -> Result<()>,
{
    fn pass(&mut self, visit: &mut Visit<'_>) -> Result<()> {
        self(visit)
    }
}

/// The first overlapping pair found, `(a, b)` with `a.start <= b.start`, or `None` when the
/// spans are disjoint. Empty spans (`end <= start`) overlap nothing. At most `budget` spans
/// are held at once (`budget >= 2`).
pub(crate) fn find_overlap(spans: &mut dyn Spans, budget: usize) -> Result<Option<(Span, Span)>> {
    let mut found = None;
    sweep(spans, budget, &mut |a, b| {
        found = Some((a, b));
        false
    })?;
    Ok(found)
}

/// Every overlap a sort-and-sweep reports: in (start, end, id) order, `f(a, b)` for each
/// non-empty span `b` that starts before the end of `a`, the span reaching furthest among
/// those before it. Holds at most `budget` spans.
pub(crate) fn each_overlap(
    spans: &mut dyn Spans,
    budget: usize,
    f: &mut dyn FnMut(Span, Span),
) -> Result<()> {
    sweep(spans, budget, &mut |a, b| {
        f(a, b);
        true
    })
}

/// The sweep both share: spans in sorted order ([`visit_sorted`]), each non-empty one checked
/// against the one reaching furthest before it; `f` is told each overlap and returns whether
/// to go on.
fn sweep(
    spans: &mut dyn Spans,
    budget: usize,
    f: &mut dyn FnMut(Span, Span) -> bool,
) -> Result<()> {
    let mut reach: Option<Span> = None;
    let mut stopped = false;
    let done = visit_sorted(spans, budget, &mut |s| {
        if s.end <= s.start {
            return Ok(());
        }
        if let Some(r) = reach.filter(|r| s.start < r.end) {
            if !f(r, s) {
                stopped = true;
                // Ends the passes early; never seen by the caller.
                return Err(crate::error::Error::Internal("sweep stopped".into()));
            }
        }
        if reach.is_none_or(|r| s.end > r.end) {
            reach = Some(s);
        }
        Ok(())
    });
    if stopped {
        Ok(())
    } else {
        done
    }
}

/// Call `visit` on every span (empty ones too) in ascending order of `(start, end, id)`,
/// holding at most `budget` spans at once: for checkers that report every neighbouring pair,
/// not just the first overlap. Ranges of starts holding more spans than the budget are split by
/// a histogram pass into ranges that fit, and each is collected, sorted and visited in turn
/// (spans that all fit are held by the counting pass itself); more spans than the budget on a
/// single start are
/// visited in batches of the smallest `(end, id)` left (ids are assumed distinct there).
pub(crate) fn visit_sorted(
    spans: &mut dyn Spans,
    budget: usize,
    visit: &mut dyn FnMut(Span) -> Result<()>,
) -> Result<()> {
    let s_budget = budget.max(2);
    let mut s = Sorter {
        spans,
        budget: s_budget,
        visit,
    };
    let (mut n, mut lo, mut hi) = (0u64, u64::MAX, 0u64);
    // The counting pass holds the spans while they fit the budget: the usual case then needs
    // no second pass over the table.
    let mut held = Some(Vec::new());
    s.each_in(0, u64::MAX, &mut |x| {
        n += 1;
        lo = lo.min(x.start);
        hi = hi.max(x.start);
        match &mut held {
            Some(v) if v.len() < s_budget => v.push(x),
            _ => held = None,
        }
    })?;
    if let Some(mut v) = held {
        v.sort_unstable();
        return v.into_iter().try_for_each(|x| (s.visit)(x));
    }
    s.range(lo, hi, n)
}

struct Sorter<'s, 'v> {
    spans: &'s mut dyn Spans,
    budget: usize,
    visit: &'v mut dyn FnMut(Span) -> Result<()>,
}

impl Sorter<'_, '_> {
    /// Visit the spans whose start is in `lo..=hi`, in pass order.
    fn each_in(&mut self, lo: u64, hi: u64, f: &mut dyn FnMut(Span)) -> Result<()> {
        self.spans.pass(&mut |s: Span| {
            if (lo..=hi).contains(&s.start) {
                f(s);
            }
            Ok(())
        })
    }

    /// Visit, in order, the `n` spans starting in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64, n: u64) -> Result<()> {
        if n <= self.budget as u64 {
            return self.sorted(lo, hi);
        }
        if lo == hi {
            return self.one_start(lo);
        }
        let buckets = self.budget.clamp(2, MAX_BUCKETS);
        let width = (hi - lo) / buckets as u64 + 1;
        let mut hist = vec![0u64; buckets];
        self.each_in(lo, hi, &mut |s| {
            let b = usize::try_from((s.start - lo) / width).unwrap_or(0);
            if let Some(c) = hist.get_mut(b) {
                *c += 1;
            }
        })?;
        let bucket_lo = |b: u64| lo.saturating_add(b.saturating_mul(width));
        let bucket_hi = |b: u64| bucket_lo(b + 1).saturating_sub(1).min(hi);
        // Neighbouring buckets are grouped while they fit the budget together.
        let mut group: Option<(u64, u64)> = None; // (first bucket, spans)
        for (b, &c) in (0u64..).zip(hist.iter()) {
            if let Some((g0, sum)) = group {
                if sum + c > self.budget as u64 {
                    self.range(bucket_lo(g0), bucket_hi(b - 1), sum)?;
                    group = None;
                }
            }
            if c > self.budget as u64 {
                self.range(bucket_lo(b), bucket_hi(b), c)?;
            } else if c > 0 {
                group = Some(group.map_or((b, c), |(g0, sum)| (g0, sum + c)));
            }
        }
        match group {
            Some((g0, sum)) => self.range(bucket_lo(g0), hi, sum),
            None => Ok(()),
        }
    }

    fn sorted(&mut self, lo: u64, hi: u64) -> Result<()> {
        let mut v = Vec::new();
        self.each_in(lo, hi, &mut |s| v.push(s))?;
        v.sort_unstable();
        v.into_iter().try_for_each(|s| (self.visit)(s))
    }

    /// More spans than the budget share the start `at`: visit them a batch of the smallest
    /// `(end, id)` above the last batch per pass.
    fn one_start(&mut self, at: u64) -> Result<()> {
        let budget = self.budget;
        let mut last: Option<(u64, u64)> = None;
        loop {
            let mut heap = std::collections::BinaryHeap::new();
            self.each_in(at, at, &mut |s| {
                let k = (s.end, s.id);
                if last.is_some_and(|l| k <= l) {
                    return;
                }
                if heap.len() < budget {
                    heap.push(k);
                } else if heap.peek().is_some_and(|&top| k < top) {
                    heap.pop();
                    heap.push(k);
                }
            })?;
            let batch = heap.into_sorted_vec();
            let Some(&l) = batch.last() else {
                return Ok(());
            };
            last = Some(l);
            for (end, id) in batch {
                (self.visit)(Span { start: at, end, id })?;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod sorted_tests {
    use super::*;

    fn visited(v: &[Span], budget: usize) -> Vec<Span> {
        let mut pass =
            |visit: &mut Visit<'_>| -> Result<()> { v.iter().try_for_each(|s| visit(*s)) };
        let mut out = Vec::new();
        visit_sorted(&mut pass, budget, &mut |s| {
            out.push(s);
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn every_span_is_visited_once_in_order_at_every_budget() {
        let mut seed = 5u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            seed >> 33
        };
        let mut v: Vec<Span> = (0..3000)
            .map(|id| {
                let start = next() % 500 * 1000 + next() % 3;
                Span {
                    start,
                    end: start + next() % 4,
                    id,
                }
            })
            .collect();
        // Many on one start, and the ends of the offset range.
        v.extend((3000..3400).map(|id| Span {
            start: 7000,
            end: 7100 - id % 50,
            id,
        }));
        v.push(Span {
            start: u64::MAX,
            end: u64::MAX,
            id: 9999,
        });
        v.push(Span {
            start: 0,
            end: 1,
            id: 10000,
        });
        let mut want = v.clone();
        want.sort_unstable();
        for budget in [2, 3, 10, 399, 401, 5000] {
            assert_eq!(visited(&v, budget), want, "budget {budget}");
        }
        assert!(visited(&[], 4).is_empty());
    }

    #[test]
    fn a_failing_visit_or_pass_stops_with_its_error() {
        let v: Vec<Span> = (0..100)
            .map(|i| Span {
                start: i * 10,
                end: i * 10 + 10,
                id: i,
            })
            .collect();
        let mut pass =
            |visit: &mut Visit<'_>| -> Result<()> { v.iter().try_for_each(|s| visit(*s)) };
        let mut seen = 0;
        let r = visit_sorted(&mut pass, 7, &mut |_| {
            seen += 1;
            if seen == 30 {
                return Err(crate::Error::Internal("stop".into()));
            }
            Ok(())
        });
        assert!(r.is_err());
        assert_eq!(seen, 30);
        let mut bad =
            |_: &mut Visit<'_>| -> Result<()> { Err(crate::Error::Internal("io".into())) };
        assert!(visit_sorted(&mut bad, 7, &mut |_| Ok(())).is_err());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spans_of(v: &[Span]) -> impl FnMut(&mut Visit<'_>) -> Result<()> + '_ {
        move |visit: &mut Visit<'_>| {
            for s in v {
                visit(*s)?;
            }
            Ok(())
        }
    }

    /// [`find_overlap`], and how many passes it made over the spans.
    fn counting(v: &[Span], budget: usize) -> (Option<(Span, Span)>, u32) {
        let mut passes = 0u32;
        let mut each = |visit: &mut Visit<'_>| {
            passes += 1;
            v.iter().try_for_each(|s| visit(*s))
        };
        let r = find_overlap(&mut each, budget).unwrap();
        (r, passes)
    }

    fn sp(start: u64, end: u64, id: u64) -> Span {
        Span { start, end, id }
    }

    /// The answer by brute force: is there any overlapping pair?
    fn any_overlap(v: &[Span]) -> bool {
        let mut w: Vec<&Span> = v.iter().filter(|s| s.end > s.start).collect();
        w.sort();
        let mut reach = 0u64;
        let mut first = true;
        for s in w {
            if !first && s.start < reach {
                return true;
            }
            first = false;
            reach = reach.max(s.end);
        }
        false
    }

    fn check(v: &[Span], budget: usize) -> Option<(Span, Span)> {
        let (r, _) = counting(v, budget);
        assert_eq!(r.is_some(), any_overlap(v), "budget {budget}: {v:?}");
        if let Some((a, b)) = r {
            assert!(a.start <= b.start && b.start < a.end, "{a:?} {b:?}");
            assert_ne!(a.id, b.id);
        }
        r
    }

    /// A small deterministic generator (no rand dependency).
    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *seed >> 33
    }

    #[test]
    fn disjoint_blocks_pass_at_every_budget() {
        // Blocks of 3 units placed every 3..5 units, shuffled.
        let mut seed = 7;
        let mut at = 10u64;
        let mut v = Vec::new();
        for i in 0..5000 {
            v.push(sp(at, at + 3, i));
            at += 3 + lcg(&mut seed) % 3;
        }
        for i in (1..v.len()).rev() {
            let j = (lcg(&mut seed) as usize) % (i + 1);
            v.swap(i, j);
        }
        for budget in [2, 3, 7, 100, 4999, 5000, 1 << 20] {
            assert_eq!(check(&v, budget), None);
        }
    }

    #[test]
    fn an_overlap_is_found_wherever_it_is_at_every_budget() {
        let mut seed = 11;
        for round in 0..60 {
            let n = 50 + lcg(&mut seed) % 400;
            let mut v: Vec<Span> = (0..n).map(|i| sp(i * 8, i * 8 + 8, i)).collect();
            // Move one block so that it overlaps another (same start, inside, or straddling).
            let k = (lcg(&mut seed) % n) as usize;
            let target = lcg(&mut seed) % n;
            let shift = [0, 3, 7, 9][(round % 4) as usize];
            v[k].start = (target * 8 + shift).min(n * 8 - 1);
            v[k].end = v[k].start + 8;
            for budget in [2, 5, 64, 1000] {
                check(&v, budget);
            }
        }
    }

    #[test]
    fn many_spans_on_one_start_and_empty_spans() {
        let mut v: Vec<Span> = (0..100).map(|i| sp(500, 600, i)).collect();
        v.push(sp(0, 100, 100));
        assert!(check(&v, 4).is_some());
        // Empty spans never overlap, even at the same place.
        let e: Vec<Span> = (0..100).map(|i| sp(5, 5, i)).collect();
        assert_eq!(check(&e, 4), None);
        assert_eq!(check(&[], 4), None);
        assert_eq!(check(&[sp(1, 2, 0)], 4), None);
    }

    #[test]
    fn spans_at_the_ends_of_the_offset_range() {
        let v = [
            sp(u64::MAX - 10, u64::MAX, 0),
            sp(0, 1, 1),
            sp(u64::MAX - 20, u64::MAX - 10, 2),
        ];
        for budget in [2, 3] {
            assert_eq!(check(&v, budget), None);
        }
        let w = [
            sp(u64::MAX - 10, u64::MAX, 0),
            sp(u64::MAX - 11, u64::MAX - 9, 1),
            sp(0, 1, 2),
        ];
        assert!(check(&w, 2).is_some());
    }

    #[test]
    fn passes_stay_few_for_large_sets() {
        // 200k disjoint blocks spread over a huge range, 10k budget: a count pass, one histogram
        // pass, then about n / budget collect passes (at most twice that after grouping).
        let n = 200_000u64;
        let v: Vec<Span> = (0..n).map(|i| sp(i << 30, (i << 30) + 4096, i)).collect();
        let (r, passes) = counting(&v, 10_000);
        assert_eq!(r, None);
        assert!(passes <= 2 + 2 * 20 + 2, "{passes} passes");
        // Spans that fit the budget are held by the counting pass: one pass in all, up to
        // exactly the budget.
        let (_, small) = counting(&v[..100], 10_000);
        assert_eq!(small, 1);
        assert_eq!(counting(&v[..10_000], 10_000).1, 1);
        assert!(counting(&v[..10_001], 10_000).1 > 2);
        let mut w = v[..10_000].to_vec();
        w[7_777].start = w[123].start + 1;
        assert_eq!(counting(&w, 10_000), (Some((w[123], w[7_777])), 1));
    }

    #[test]
    fn a_failing_pass_is_an_error() {
        let mut bad =
            |_: &mut Visit<'_>| -> Result<()> { Err(crate::Error::Internal("io".into())) };
        assert!(find_overlap(&mut bad, 10).is_err());
    }

    /// The sweep `each_overlap` must reproduce: sort, then report each span starting before
    /// the end of the furthest-reaching span before it.
    fn sweep(v: &[Span]) -> Vec<(u64, u64)> {
        let mut w: Vec<Span> = v.iter().copied().filter(|s| s.end > s.start).collect();
        w.sort_unstable();
        let mut carry: Option<Span> = None;
        let mut out = Vec::new();
        for s in w {
            if let Some(c) = carry.filter(|c| s.start < c.end) {
                out.push((c.id, s.id));
            }
            if carry.is_none_or(|c| s.end > c.end) {
                carry = Some(s);
            }
        }
        out
    }

    #[test]
    fn each_overlap_reports_what_a_sweep_does_in_its_order_at_every_budget() {
        let mut seed = 5;
        for round in 0..40 {
            let n = 20 + lcg(&mut seed) % 300;
            let v: Vec<Span> = (0..n)
                .map(|i| {
                    // Distinct starts (a group larger than the budget on one start is swept
                    // in visit order, see below).
                    let start = lcg(&mut seed) % (n * 6) * 1000 + i;
                    let len = [0, 1000, 3000, 8000, 40000][(lcg(&mut seed) % 5) as usize];
                    sp(start, start + len, i)
                })
                .collect();
            let want = sweep(&v);
            assert!(!want.is_empty(), "round {round}: no overlap to report");
            for budget in [2, 3, 16, 1000] {
                let mut got = Vec::new();
                each_overlap(&mut spans_of(&v), budget, &mut |a, b| {
                    got.push((a.id, b.id))
                })
                .unwrap();
                assert_eq!(got, want, "round {round} budget {budget}");
            }
        }
        // More spans than the budget on one start: every one after the first is reported.
        let same: Vec<Span> = (0..50).map(|i| sp(100, 200, i)).collect();
        let mut count = 0;
        each_overlap(&mut spans_of(&same), 4, &mut |_, _| count += 1).unwrap();
        assert_eq!(count, 49);
    }
}
