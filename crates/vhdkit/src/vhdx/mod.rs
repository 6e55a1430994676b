//! VHDX files. PLACEHOLDER: being written.
#![allow(missing_docs, dead_code)]

use crate::disk::{
    DiskFormat, DiskType, Extent, FormatInfo, Image, OpenOptions, ParentLinkage, ParentLocator,
};
use crate::error::{Error, Result};
use crate::source::Source;
use uuid::Uuid;

#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct VhdxInfo {
    pub timestamp: u32,
}

#[derive(Debug)]
pub struct VhdxFile {}

impl VhdxFile {
    pub(crate) fn open(_src: Box<dyn Source>, _opts: &OpenOptions) -> Result<VhdxFile> {
        Err(Error::unsupported("vhdx"))
    }
}

impl Image for VhdxFile {
    fn format(&self) -> DiskFormat {
        DiskFormat::Vhdx
    }
    fn disk_type(&self) -> DiskType {
        DiskType::Fixed
    }
    fn virtual_size(&self) -> u64 {
        0
    }
    fn block_size(&self) -> Option<u64> {
        None
    }
    fn logical_sector_size(&self) -> u32 {
        512
    }
    fn physical_sector_size(&self) -> u32 {
        512
    }
    fn identity(&self) -> Uuid {
        Uuid::nil()
    }
    fn parent_linkage(&self) -> Option<ParentLinkage> {
        None
    }
    fn parent_locators(&self) -> Vec<ParentLocator> {
        vec![]
    }
    fn map(&self, _offset: u64, max_len: u64) -> Result<(Extent, u64)> {
        Ok((Extent::Zero, max_len))
    }
    fn read_data(&self, _file_offset: u64, _buf: &mut [u8]) -> Result<()> {
        Ok(())
    }
    fn file_size(&self) -> u64 {
        0
    }
    fn warnings(&self) -> Vec<String> {
        vec![]
    }
    fn details(&self) -> FormatInfo {
        FormatInfo::Vhdx(VhdxInfo { timestamp: 0 })
    }
}
