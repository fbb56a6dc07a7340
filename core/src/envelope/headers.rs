//! A message's headers in two buffers, however many there are.

use std::fmt;

use super::BINARY_HEADERS;

/// `Entry::name_start` of a name that is one of choreo's own, `BINARY_HEADERS[name_end]`.
const KNOWN: u32 = u32::MAX;

/// A message's headers in arrival order: names, and values of bytes because brokers allow
/// any.
///
/// Every value, and every name that is not one choreo writes, lives in one buffer, so an
/// event's dozen headers take two allocations rather than two dozen, and a queued message
/// holds about half the memory.
///
/// # Panics
///
/// Pushing a header panics when the names and values would exceed 4 GiB.
#[derive(Clone, Default)]
pub struct Headers {
    /// Stored names and all values, back to back.
    bytes: Vec<u8>,
    entries: Vec<Entry>,
}

#[derive(Clone, Copy)]
struct Entry {
    /// Where the name lies in `bytes`; `KNOWN` and an index into `BINARY_HEADERS` for a
    /// name choreo writes.
    name_start: u32,
    name_end: u32,
    value_start: u32,
    value_end: u32,
}

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// No headers, with room for `headers` of them holding `bytes` bytes of names and values.
    pub fn with_capacity(headers: usize, bytes: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(bytes),
            entries: Vec::with_capacity(headers),
        }
    }

    /// How many headers there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends the header `name: value`, after any of the same name.
    pub fn push(&mut self, name: &str, value: &[u8]) {
        match BINARY_HEADERS.iter().position(|(_, known)| *known == name) {
            Some(index) => self.push_known(index, value),
            None => {
                let name_start = self.offset();
                self.bytes.extend_from_slice(name.as_bytes());
                let name_end = self.offset();
                self.push_value(name_start, name_end, value);
            }
        }
    }

    /// Appends `BINARY_HEADERS[index]`'s header with `value`.
    pub(super) fn push_known(&mut self, index: usize, value: &[u8]) {
        debug_assert!(index < BINARY_HEADERS.len());
        // The table has fourteen names.
        self.push_value(KNOWN, index as u32, value);
    }

    fn push_value(&mut self, name_start: u32, name_end: u32, value: &[u8]) {
        let value_start = self.offset();
        self.bytes.extend_from_slice(value);
        self.entries.push(Entry {
            name_start,
            name_end,
            value_start,
            value_end: self.offset(),
        });
    }

    /// The end of the buffer, which is below `KNOWN`.
    fn offset(&self) -> u32 {
        match u32::try_from(self.bytes.len()) {
            Ok(offset) if offset < KNOWN => offset,
            _ => panic!("a message's header names and values exceed 4 GiB"),
        }
    }

    /// The value of the first header named `name`, ASCII case-insensitively.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    }

    /// Every header, in order.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            headers: self,
            entries: self.entries.iter(),
        }
    }

    /// Every header: its name, its index in `BINARY_HEADERS` when it is one of choreo's, and
    /// its value as text where it is UTF-8. Values are checked all at once: when the buffer is
    /// text, a value that is not empty is text exactly when it starts and ends between
    /// characters, which is cheaper than checking a dozen short values one by one. (An empty
    /// value is text wherever it lies, even between the bytes of one character.)
    pub(super) fn texts(&self) -> impl Iterator<Item = (&str, Option<usize>, Option<&str>)> {
        let all = std::str::from_utf8(&self.bytes).ok();
        self.entries.iter().map(move |entry| {
            let (name, value) = self.read(entry);
            let known = (entry.name_start == KNOWN).then_some(entry.name_end as usize);
            let text = match all {
                _ if value.is_empty() => Some(""),
                Some(all) => all.get(entry.value_start as usize..entry.value_end as usize),
                None => std::str::from_utf8(value).ok(),
            };
            (name, known, text)
        })
    }

    /// Keeps only the headers `keep` says to, in order.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &[u8]) -> bool) {
        *self = self
            .iter()
            .filter(|(name, value)| keep(name, value))
            .collect();
    }

    fn read(&self, entry: &Entry) -> (&str, &[u8]) {
        let range = |start: u32, end: u32| start as usize..end as usize;
        let name = if entry.name_start == KNOWN {
            BINARY_HEADERS[entry.name_end as usize].1
        } else {
            // Stored names were pushed as `&str`; the check is a formality that cannot fail.
            std::str::from_utf8(&self.bytes[range(entry.name_start, entry.name_end)])
                .unwrap_or_default()
        };
        (name, &self.bytes[range(entry.value_start, entry.value_end)])
    }
}

/// The headers of a [`Headers`], in order: see [`Headers::iter`].
#[derive(Clone)]
pub struct Iter<'a> {
    headers: &'a Headers,
    entries: std::slice::Iter<'a, Entry>,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a str, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        self.entries.next().map(|entry| self.headers.read(entry))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.entries.size_hint()
    }
}

impl DoubleEndedIterator for Iter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.entries
            .next_back()
            .map(|entry| self.headers.read(entry))
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a Headers {
    type Item = (&'a str, &'a [u8]);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<N: AsRef<str>, V: AsRef<[u8]>> Extend<(N, V)> for Headers {
    fn extend<I: IntoIterator<Item = (N, V)>>(&mut self, headers: I) {
        for (name, value) in headers {
            self.push(name.as_ref(), value.as_ref());
        }
    }
}

impl<N: AsRef<str>, V: AsRef<[u8]>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(headers: I) -> Self {
        let mut collected = Self::new();
        collected.extend(headers);
        collected
    }
}

impl<N: AsRef<str>, V: AsRef<[u8]>, const K: usize> From<[(N, V); K]> for Headers {
    fn from(headers: [(N, V); K]) -> Self {
        headers.into_iter().collect()
    }
}

/// Equal when they hold the same headers in the same order, however they are stored.
impl PartialEq for Headers {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for Headers {}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Values byte for byte, bytes outside printable ASCII escaped, as equality sees them.
        f.debug_list()
            .entries(
                self.iter()
                    .map(|(name, value)| (name, value.escape_ascii().to_string())),
            )
            .finish()
    }
}
