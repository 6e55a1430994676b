//! `vhdkit info FILE`.

use std::fmt::Write as _;

use vhdkit::Disk;

use crate::cli::InfoArgs;
use crate::output::{self, CliError};
use crate::Outcome;

pub fn run(a: &InfoArgs) -> Result<Outcome, CliError> {
    let disk = Disk::open(&a.file)?;
    let info = disk.info();
    if a.json {
        output::print_json(&info)?;
        return Ok(Outcome::Ok);
    }
    let mut s = String::new();
    let _ = writeln!(s, "file:                 {}", a.file.display());
    let _ = writeln!(s, "format:               {}", info.format);
    let _ = writeln!(s, "type:                 {}", info.disk_type);
    let _ = writeln!(
        s,
        "virtual size:         {}",
        output::size(info.virtual_size)
    );
    let _ = writeln!(s, "file size:            {}", output::size(info.file_size));
    match info.block_size {
        Some(b) => {
            let _ = writeln!(s, "block size:           {}", output::size(b));
        }
        None => {
            let _ = writeln!(s, "block size:           - (fixed disk)");
        }
    }
    let _ = writeln!(
        s,
        "sector size:          {} logical, {} physical",
        info.logical_sector_size, info.physical_sector_size
    );
    let _ = writeln!(s, "id:                   {}", info.id);
    match &info.parent {
        None => {
            let _ = writeln!(s, "parent:               none");
        }
        Some(p) => {
            let _ = writeln!(s, "parent id:            {}", p.id);
            if let Some(alt) = p.alternate_id {
                let _ = writeln!(s, "parent id (alt):      {alt}");
            }
            if let Some(ts) = p.timestamp {
                let _ = writeln!(s, "parent time stamp:    {ts}");
            }
            let _ = writeln!(s, "parent locators:      (in the order they are tried)");
            for l in &p.locators {
                match (&l.path, &l.error) {
                    (Some(path), _) => {
                        let _ = writeln!(s, "  {:<20} {path}", l.kind);
                    }
                    (None, Some(err)) => {
                        let _ = writeln!(s, "  {:<20} (unreadable: {err})", l.kind);
                    }
                    (None, None) => {
                        let _ = writeln!(s, "  {:<20} (empty)", l.kind);
                    }
                }
            }
        }
    }
    for w in &info.warnings {
        let _ = writeln!(s, "warning:              {w}");
    }
    // The format-specific part, rendered generically from its data so no field is forgotten.
    let details = serde_json::to_value(&info.details).map_err(|e| CliError::Output(e.into()))?;
    if let serde_json::Value::Object(map) = details {
        let _ = writeln!(s, "{} details:", info.format);
        for (k, v) in &map {
            output::render_value(&mut s, k, v, 1);
        }
    }
    if output::text_wanted() {
        print!("{s}");
    }
    Ok(Outcome::Ok)
}
