//! The `check` finding code of a corruption found where no specific rule applies: a structure
//! the file ends before, or whose bytes do not parse. Errors of a specific rule set their own
//! code with [`super::Error::with_code`].

/// The code `check` reports when `structure` (a reader's structure name) is cut off by the end
/// of the file or does not parse; `None` for a name no format uses.
pub(super) fn default_code(structure: &str) -> Option<&'static str> {
    // Longest prefixes first: "vhd footer" must not catch "vhdx ...", hence the trailing space.
    const BY_PREFIX: &[(&str, &str)] = &[
        ("vhd footer", "vhd.file.too_small"),
        ("vhd dynamic header", "vhd.header.truncated"),
        ("vhd block allocation table", "vhd.bat.past_eof"),
        ("vhd sector bitmap", "vhd.block.past_eof"),
        ("vhd data", "vhd.block.past_eof"),
        ("vhd parent locator", "vhd.locator.out_of_bounds"),
        ("vhd metadata", "vhd.locator.out_of_bounds"),
        ("vhd file", "vhd.file.too_small"),
        ("vhdx file identifier", "vhdx.file.too_small"),
        ("vhdx header", "vhdx.file.too_small"),
        ("vhdx region table", "vhdx.file.too_small"),
        ("vhdx log", "vhdx.log.corrupt"),
        ("vhdx metadata table", "vhdx.region.past_eof"),
        ("vhdx metadata item", "vhdx.metadata.item_bounds"),
        ("vhdx parent locator", "vhdx.locator.invalid"),
        ("vhdx block allocation table", "vhdx.bat.too_small"),
        ("vhdx sector bitmap", "vhdx.bat.past_eof"),
        ("vhdx payload block", "vhdx.bat.past_eof"),
    ];
    BY_PREFIX
        .iter()
        .find(|(p, _)| {
            structure
                .strip_prefix(p)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '(']))
        })
        .map(|&(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_is_a_registered_code() {
        let names = [
            "vhd footer",
            "vhd footer (copy at offset 0)",
            "vhd dynamic header",
            "vhdx header 1",
            "vhdx region table 2",
            "vhdx log entry",
            "vhdx metadata item virtual disk size",
            "vhdx payload block",
        ];
        for n in names {
            let c = default_code(n).unwrap();
            assert!(
                crate::check::CODES.iter().any(|r| r.0 == c),
                "{n}: {c} unregistered"
            );
        }
        assert_eq!(default_code("vhd footer"), Some("vhd.file.too_small"));
        assert_eq!(default_code("vhdx header 2"), Some("vhdx.file.too_small"));
        assert_eq!(default_code("vhd footers"), None);
        assert_eq!(default_code("block map"), None);
    }
}
