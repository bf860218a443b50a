//! Names of files in the replicated tree: the rules every name must follow, and the few
//! string operations on names that HTTP, FUSE and the state machine share.
//!
//! A name is a relative path with `/` between components: no empty component, no `.` or
//! `..`, no NUL, within the length limits. A name that passes can only ever mean something
//! inside the tree — the state machine checks again where it applies a command, and resolves
//! beneath `files/` besides (see `store::beneath`).

/// Longest accepted path component, in bytes (the usual filesystem limit).
pub const MAX_COMPONENT: usize = 255;
/// Longest accepted path, in bytes: Linux's `PATH_MAX` (4,096 with the terminating NUL).
pub const MAX_PATH: usize = 4095;
/// Deepest accepted nesting.
pub const MAX_DEPTH: usize = 32;

/// Which rule a name broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The empty name.
    #[error("empty path")]
    Empty,
    /// Longer than [`MAX_PATH`].
    #[error("path longer than {MAX_PATH} bytes")]
    TooLong,
    /// A component longer than [`MAX_COMPONENT`].
    #[error("path component longer than {MAX_COMPONENT} bytes")]
    ComponentTooLong,
    /// More than [`MAX_DEPTH`] components.
    #[error("more than {MAX_DEPTH} path components")]
    TooDeep,
    /// A NUL byte.
    #[error("NUL byte in path")]
    Nul,
    /// Starts with `/`.
    #[error("absolute path")]
    Absolute,
    /// `a//b` or a trailing `/`.
    #[error("empty path component")]
    EmptyComponent,
    /// A `.` or `..` component.
    #[error("`.` and `..` are not allowed")]
    Dots,
}

impl NameError {
    /// Whether the name is too long (FUSE answers `ENAMETOOLONG` rather than `EINVAL`).
    pub fn is_length(self) -> bool {
        matches!(self, NameError::TooLong | NameError::ComponentTooLong)
    }
}

/// Checks that `name` is a clean relative path.
pub fn check(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_PATH {
        return Err(NameError::TooLong);
    }
    if name.contains('\0') {
        return Err(NameError::Nul);
    }
    if name.starts_with('/') {
        return Err(NameError::Absolute);
    }
    let mut depth = 0;
    for component in name.split('/') {
        depth += 1;
        match component {
            "" => return Err(NameError::EmptyComponent),
            "." | ".." => return Err(NameError::Dots),
            c if c.len() > MAX_COMPONENT => return Err(NameError::ComponentTooLong),
            _ => {}
        }
    }
    if depth > MAX_DEPTH {
        return Err(NameError::TooDeep);
    }
    Ok(())
}

/// [`check`], as the crate's error (what front ends return to a client).
pub fn validate(name: &str) -> crate::Result<()> {
    check(name).map_err(|reason| crate::Error::InvalidPath {
        path: name.to_string(),
        reason,
    })
}

/// Joins a directory name (the empty name is the root) and a child's name.
pub fn child_path(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

/// Splits a name into its parent (the empty name for the root) and last component.
pub fn split(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some((parent, name)) => (parent, name),
        None => ("", path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_names_pass() {
        for name in [
            "foo",
            "a/b/c",
            "with space",
            "ünïcode",
            "log",
            "info",
            ".hidden",
            "a..b",
        ] {
            check(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn dangerous_names_are_refused_with_their_reason() {
        let long = "x".repeat(256);
        let longest = vec!["x".repeat(255); 17].join("/");
        let deep = vec!["d"; 33].join("/");
        for (name, why) in [
            ("", NameError::Empty),
            ("/etc/passwd", NameError::Absolute),
            ("..", NameError::Dots),
            ("../x", NameError::Dots),
            ("a/../../x", NameError::Dots),
            ("a/./b", NameError::Dots),
            ("a//b", NameError::EmptyComponent),
            ("a/", NameError::EmptyComponent),
            ("nul\0", NameError::Nul),
            (&long, NameError::ComponentTooLong),
            (&longest, NameError::TooLong),
            (&deep, NameError::TooDeep),
        ] {
            assert_eq!(check(name), Err(why), "{name:?}");
        }
        assert!(NameError::TooLong.is_length() && !NameError::Dots.is_length());
    }

    #[test]
    fn a_path_as_long_as_linux_allows_is_accepted() {
        let max = vec!["x".repeat(255); 16].join("/");
        assert_eq!(max.len(), 4095);
        check(&max).unwrap();
        assert_eq!(check(&format!("{max}y")), Err(NameError::TooLong));
    }

    #[test]
    fn names_split_and_join() {
        assert_eq!(split("a/b/c"), ("a/b", "c"));
        assert_eq!(split("top"), ("", "top"));
        assert_eq!(child_path("", "x"), "x");
        assert_eq!(child_path("a", "x"), "a/x");
    }
}
