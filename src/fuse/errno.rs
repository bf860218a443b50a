//! [`Error`] → errno, in one place.

use crate::error::{Error, FileError};

/// The errno a FUSE caller sees for each kind of error.
pub(crate) fn errno(err: &Error) -> libc::c_int {
    match err {
        Error::File(FileError::NotFound(_)) => libc::ENOENT,
        Error::File(FileError::AlreadyExists(_)) => libc::EEXIST,
        Error::File(FileError::NotADirectory(_)) => libc::ENOTDIR,
        Error::File(FileError::IsADirectory(_)) => libc::EISDIR,
        Error::File(FileError::NotEmpty(_)) => libc::ENOTEMPTY,
        Error::File(FileError::Invalid(_) | FileError::InvalidPath(_)) => libc::EINVAL,
        Error::InvalidPath { reason, .. } if reason.is_length() => libc::ENAMETOOLONG,
        Error::InvalidPath { .. } | Error::BadRequest(_) => libc::EINVAL,
        Error::TooLarge { .. } => libc::EFBIG,
        Error::NoSpace(_) => libc::ENOSPC,
        // What the local filesystem said of a request it cannot hold (a size past its
        // largest file, a bad length) is the caller's answer, not an I/O error.
        Error::Io { source, .. } => match source.raw_os_error() {
            Some(e @ (libc::EFBIG | libc::EINVAL | libc::ENOSPC | libc::EDQUOT)) => e,
            _ => libc::EIO,
        },
        // No quorum, no leader, a disk fault: the data did not reach a majority.
        Error::Unavailable(_) | Error::Raft(_) | Error::Peer { .. } => libc::EIO,
        Error::CorruptLog { .. } | Error::Config(_) | Error::Gone(_) => libc::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicated_outcomes_keep_their_meaning() {
        assert_eq!(errno(&FileError::NotEmpty("d".into()).into()), libc::ENOTEMPTY);
        assert_eq!(errno(&Error::Unavailable("no quorum".into())), libc::EIO);
        let io = |e| Error::io("resize", std::io::Error::from_raw_os_error(e));
        assert_eq!(errno(&io(libc::EFBIG)), libc::EFBIG);
        assert_eq!(errno(&io(libc::EROFS)), libc::EIO);
        let long = crate::names::validate(&"x".repeat(300)).unwrap_err();
        assert_eq!(errno(&long), libc::ENAMETOOLONG);
        assert_eq!(
            errno(&crate::names::validate("a/../b").unwrap_err()),
            libc::EINVAL
        );
    }
}
