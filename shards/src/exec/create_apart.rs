//! Creating a segment file whose inode does not share an inode-table block with the
//! log's open segments.
//!
//! On ext4 without a journal (kernels since 6.x), every `fsync`/`fdatasync` writes the
//! file's inode-table block if anything in it is dirty, synchronously, before the
//! device flush. A block holds 16 inodes (256-byte inodes in 4 KiB blocks, mkfs.ext4's
//! default), and files created one after another get neighbouring inode numbers. So
//! the next segment file, zero-written in pieces while the log commits (each piece
//! changes its size and extents), sat in the active segment's block: about one commit
//! in eight then paid an extra synchronous write of that block. A raw probe here
//! (`pwrite` 4 KiB + `fdatasync`, 32 KiB zero-written into another file after every
//! fifth commit) put that file's neighbourhood at +19-27% on the mean commit, against
//! +5-10% for a file in another block.
//!
//! So a new file that lands in an open segment's block is unlinked, kept open (so the
//! allocator cannot hand its inode back at once) and created again; once one lands
//! elsewhere, the unlinked ones are closed and their inodes freed. A crash in between
//! leaves at most empty orphan inodes (reclaimed by the journal's orphan list, or by
//! `fsck` without one), never a file the log sees. Where the allocator hands the same
//! (or a lower) number back anyway, or an unlink fails, it keeps the file it has.

use crate::fs::{Fs, FsFile, OpenMode};
use std::io;
use std::path::Path;
use std::sync::Arc;

/// Inodes per inode-table block assumed: 256-byte inodes in 4 KiB blocks.
pub const INODES_PER_BLOCK: u64 = 16;

/// Creates given up on after this many (the file is kept where it landed).
pub const MAX_RECREATES: usize = INODES_PER_BLOCK as usize;

/// The inode-table block of inode `ino` (inode numbers start at 1).
pub fn table_block(ino: u64) -> u64 {
    ino.saturating_sub(1) / INODES_PER_BLOCK
}

/// Whether a file just created with inode `ino` should be removed and created again:
/// it shares a block in `taken`, the allocator moved forward since the last attempt
/// (`prev`), and the retries are not used up.
pub fn recreate(ino: Option<u64>, prev: Option<u64>, taken: &[u64], tries: usize) -> bool {
    let Some(ino) = ino else {
        return false;
    };
    let moved_on = prev.is_none_or(|p| ino > p);
    taken.contains(&table_block(ino)) && moved_on && tries < MAX_RECREATES
}

/// Creates `path` (exclusively) with `mode`, away from the inode-table blocks of the
/// inodes `open` (the log's open segment files) where the file system allows.
pub fn create_apart(
    fs: &dyn Fs,
    path: &Path,
    direct: bool,
    mode: u32,
    open: &[u64],
) -> io::Result<Arc<dyn FsFile>> {
    let taken: Vec<u64> = open.iter().map(|&i| table_block(i)).collect();
    let mut held = Vec::new();
    let mut prev = None;
    loop {
        let f = fs.open(path, OpenMode::CreateNew { direct, mode })?;
        let ino = f.inode();
        if !recreate(ino, prev, &taken, held.len()) {
            // Closing the held files frees their inodes.
            return Ok(f);
        }
        // Placement is only a speed-up: a file that cannot be unlinked is kept.
        if fs.unlink(path).is_err() {
            return Ok(f);
        }
        held.push(f);
        prev = ino;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::sim::SimFs;

    #[test]
    fn blocks_hold_sixteen_inodes_from_inode_one() {
        assert_eq!(table_block(1), 0);
        assert_eq!(table_block(16), 0);
        assert_eq!(table_block(17), 1);
        assert_eq!(table_block(0), 0);
    }

    #[test]
    fn a_file_is_created_again_only_while_it_shares_a_block_and_the_allocator_moves_on() {
        let taken = [table_block(5)];
        // Shares the block, first attempt: again.
        assert!(recreate(Some(6), None, &taken, 0));
        // The allocator moved on, still in the block: again.
        assert!(recreate(Some(7), Some(6), &taken, 1));
        // Another block: kept.
        assert!(!recreate(Some(17), Some(16), &taken, 11));
        // The same number handed back (a journaled file system reuses it): kept.
        assert!(!recreate(Some(6), Some(6), &taken, 1));
        // Retries used up: kept.
        assert!(!recreate(Some(8), Some(7), &taken, MAX_RECREATES));
        // No inode numbers: kept.
        assert!(!recreate(None, None, &taken, 0));
    }

    /// A simulated disk with `/d/a` created: the disk and `a`'s inode.
    fn disk_with_active_file() -> (SimFs, u64) {
        let fs = SimFs::new(7);
        fs.mkdir(Path::new("/d"), 0o700).unwrap();
        let active = create_apart(&fs, Path::new("/d/a"), false, 0o600, &[]).unwrap();
        let a = active.inode().unwrap();
        (fs, a)
    }

    fn names_in_d(fs: &SimFs) -> Vec<std::ffi::OsString> {
        let mut names = fs.list_dir(Path::new("/d")).unwrap();
        names.sort();
        names
    }

    #[test]
    fn the_new_file_lands_outside_the_open_files_blocks_and_leaves_nothing_behind() {
        let (fs, a) = disk_with_active_file();
        let next = create_apart(&fs, Path::new("/d/b"), false, 0o600, &[a]).unwrap();
        let b = next.inode().unwrap();
        assert_ne!(table_block(a), table_block(b), "inodes {a} and {b}");
        assert_eq!(names_in_d(&fs), ["a", "b"]);
        // Written, synced and read back like any file.
        next.pwritev(0, &[b"zeros"]).unwrap();
        next.fdatasync().unwrap();
        let mut buf = [0u8; 5];
        assert_eq!(next.pread(0, &mut buf).unwrap(), 5);
        assert_eq!(&buf, b"zeros");
    }

    #[test]
    fn a_file_that_cannot_be_unlinked_is_kept_where_it_landed() {
        let (fs, a) = disk_with_active_file();
        fs.set_faults(crate::fs::sim::Faults {
            unlink_error_ppm: 1_000_000,
            ..Default::default()
        });
        let next = create_apart(&fs, Path::new("/d/b"), false, 0o600, &[a]).unwrap();
        assert_eq!(table_block(next.inode().unwrap()), table_block(a));
        assert_eq!(names_in_d(&fs), ["a", "b"]);
    }
}
