//! GUID byte orders, in one place.
//!
//! VHDX stores every GUID in the Microsoft mixed-endian layout (`Uuid::from_bytes_le`). VHD's
//! unique ids are 16 opaque bytes whose order depends on the producer; vhdkit compares and copies
//! them as raw bytes and displays them big-endian (`Uuid::from_bytes`), as libvhdi does.

use uuid::Uuid;

/// A GUID stored in the VHDX (Microsoft) byte layout.
pub fn from_vhdx_bytes(b: [u8; 16]) -> Uuid {
    Uuid::from_bytes_le(b)
}

/// The VHDX on-disk bytes of a GUID.
pub fn to_vhdx_bytes(u: &Uuid) -> [u8; 16] {
    u.to_bytes_le()
}

/// A VHD unique id (raw bytes, displayed big-endian).
pub fn from_vhd_bytes(b: [u8; 16]) -> Uuid {
    Uuid::from_bytes(b)
}

/// The VHD on-disk bytes of a unique id.
pub fn to_vhd_bytes(u: &Uuid) -> [u8; 16] {
    *u.as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vhdx_bat_region_guid_bytes() {
        // MS-VHDX 2.2.3.1: BAT region 2DC27766-F623-4200-9D64-115E9BFD4A08.
        let bytes = [
            0x66, 0x77, 0xC2, 0x2D, 0x23, 0xF6, 0x00, 0x42, 0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD,
            0x4A, 0x08,
        ];
        let u = from_vhdx_bytes(bytes);
        assert_eq!(u.to_string(), "2dc27766-f623-4200-9d64-115e9bfd4a08");
        assert_eq!(to_vhdx_bytes(&u), bytes);
    }
}
