//! Holes: finding a file's data, punching ranges out of it, and copying it without filling
//! them in. A sparse file keeps its holes on every replica, in snapshots and in copies, so a
//! 16 GiB file that holds a few bytes costs a few blocks everywhere.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// The ranges of `file` within `[from, to)` that hold data, as `(offset, length)`, from
/// `SEEK_DATA`/`SEEK_HOLE`. A filesystem without hole support reports all of it as data.
pub fn data_extents(file: &File, from: u64, to: u64) -> io::Result<Vec<(u64, u64)>> {
    let mut extents = Vec::new();
    let mut at = from;
    while at < to {
        let Some(start) = seek(file, at, libc::SEEK_DATA)? else {
            break;
        };
        if start >= to {
            break;
        }
        let end = seek(file, start, libc::SEEK_HOLE)?.unwrap_or(to).min(to);
        extents.push((start, end - start));
        at = end;
    }
    Ok(extents)
}

/// `lseek` on a shared descriptor: only the returned offset matters (raftd reads and writes
/// with positional calls). `None` when there is no data at or after `at` (`ENXIO`).
fn seek(file: &File, at: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let off = i64::try_from(at).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let r = unsafe { libc::lseek(file.as_raw_fd(), off, whence) };
    if r >= 0 {
        return Ok(Some(r as u64));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENXIO) => Ok(None),
        _ => Err(e),
    }
}

/// The next offset at or after `at` that holds data (`SEEK_DATA`), or `None`.
pub fn next_data(file: &File, at: u64) -> io::Result<Option<u64>> {
    seek(file, at, libc::SEEK_DATA)
}

/// The next hole at or after `at` (`SEEK_HOLE`; the end of the file counts as one), or `None`
/// past the end.
pub fn next_hole(file: &File, at: u64) -> io::Result<Option<u64>> {
    seek(file, at, libc::SEEK_HOLE)
}

/// Makes `[offset, offset + len)` read as zeros without allocating: a punched hole, or
/// written zeros where the filesystem cannot punch. The length of the file is unchanged.
pub fn punch(file: &File, offset: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    let r = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset as i64, len as i64) };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
        return Err(e);
    }
    let zeros = vec![0u8; 1 << 16];
    let mut at = offset;
    while at < offset + len {
        let n = (offset + len - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Copies the first `len` bytes of `src` into `dst` (empty), keeping holes holes; `dst` gets
/// length `len` even if `src` is shorter.
pub fn copy(src: &File, dst: &File, len: u64) -> io::Result<()> {
    let mut buf = vec![0u8; 1 << 16];
    for (start, n) in data_extents(src, 0, len)? {
        let mut at = start;
        while at < start + n {
            let want = (start + n - at).min(buf.len() as u64) as usize;
            let got = src.read_at(&mut buf[..want], at)?;
            if got == 0 {
                break;
            }
            dst.write_all_at(&buf[..got], at)?;
            at += got as u64;
        }
    }
    dst.set_len(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_are_found_punched_and_copied_as_holes() {
        let dir = tempfile::tempdir().unwrap();
        let src = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("src"))
            .unwrap();
        let far = 64 << 20;
        src.write_all_at(b"head", 0).unwrap();
        src.write_all_at(b"tail", far).unwrap();
        let extents = data_extents(&src, 0, far + 4).unwrap();
        assert_eq!(extents.first().unwrap().0, 0);
        assert!(extents.last().unwrap().0 + extents.last().unwrap().1 >= far + 4);
        let data: u64 = extents.iter().map(|e| e.1).sum();
        assert!(data < 1 << 20, "a 64 MiB gap is a hole: {extents:?}");

        let dst = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("dst"))
            .unwrap();
        copy(&src, &dst, far + 4).unwrap();
        let mut got = [0u8; 4];
        dst.read_exact_at(&mut got, far).unwrap();
        assert_eq!(&got, b"tail");
        assert!(std::os::unix::fs::MetadataExt::blocks(&dst.metadata().unwrap()) < 2048);

        punch(&dst, 0, 4096).unwrap();
        dst.read_exact_at(&mut got, 0).unwrap();
        assert_eq!(got, [0; 4]);
        assert_eq!(
            dst.metadata().unwrap().len(),
            far + 4,
            "punching keeps the length"
        );
        assert_eq!(next_data(&dst, 0).unwrap().map(|d| d >= 4096), Some(true));
    }
}
