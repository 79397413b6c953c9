//! [`ChildName`]: a directory entry name carried inline in directory
//! events, so reporting a new cgroup never allocates.

use std::ffi::CStr;

use super::dir::NAME_MAX;

/// A directory entry name held inline (no heap), NUL-terminated so it can be
/// passed to `openat` as it is.
#[derive(Clone, Copy)]
pub struct ChildName {
    len: u8,
    bytes: [u8; NAME_MAX + 1],
}

impl ChildName {
    /// A name of at most [`NAME_MAX`] bytes with no `/` or NUL.
    pub fn new(name: &[u8]) -> Option<Self> {
        if name.is_empty() || name.len() > NAME_MAX || name.iter().any(|b| *b == 0 || *b == b'/') {
            return None;
        }
        let mut bytes = [0u8; NAME_MAX + 1];
        bytes.get_mut(..name.len())?.copy_from_slice(name);
        Some(ChildName {
            len: u8::try_from(name.len()).ok()?,
            bytes,
        })
    }

    /// The name's bytes (no terminator).
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or(&[])
    }

    /// The name as an `OsStr`: exactly its bytes, UTF-8 or not (a tenant
    /// chooses its cgroups' names).
    pub fn as_os_str(&self) -> &std::ffi::OsStr {
        std::os::unix::ffi::OsStrExt::from_bytes(self.as_bytes())
    }

    /// The name as UTF-8, if it is (cgroup names nearly always are; use
    /// [`as_os_str`](Self::as_os_str) for paths).
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(self.as_bytes()).ok()
    }

    /// The name as a C string, for `openat`.
    pub fn as_c_str(&self) -> &CStr {
        self.bytes
            .get(..=usize::from(self.len))
            .and_then(|b| CStr::from_bytes_with_nul(b).ok())
            .unwrap_or(c"")
    }
}

impl PartialEq for ChildName {
    fn eq(&self, o: &Self) -> bool {
        self.as_bytes() == o.as_bytes()
    }
}

impl Eq for ChildName {}

impl std::hash::Hash for ChildName {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.as_bytes().hash(h);
    }
}

impl PartialEq<str> for ChildName {
    fn eq(&self, o: &str) -> bool {
        self.as_bytes() == o.as_bytes()
    }
}

impl PartialEq<&str> for ChildName {
    fn eq(&self, o: &&str) -> bool {
        self.as_bytes() == o.as_bytes()
    }
}

impl std::fmt::Debug for ChildName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&String::from_utf8_lossy(self.as_bytes()), f)
    }
}

impl std::fmt::Display for ChildName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&String::from_utf8_lossy(self.as_bytes()), f)
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for ChildName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}
