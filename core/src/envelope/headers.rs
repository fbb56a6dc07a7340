//! A message's headers in two buffers, however many there are.

use std::fmt;
use std::ops::Range;

use super::BINARY_HEADERS;

/// `Entry::name` from here up is one of choreo's own names, `BINARY_HEADERS[name - KNOWN]`;
/// below it, a stored name ends there. The table has fourteen names.
const KNOWN: u32 = u32::MAX - 15;

/// A message's headers in arrival order: names, and values of bytes because brokers allow
/// any.
///
/// Every value, and every name that is not one choreo writes, lives in one buffer, so an
/// event's dozen headers take two allocations rather than two dozen, and a queued message
/// holds about half the memory. Each header takes eight bytes besides: where its name and
/// its value end, since each starts where the one before it ended.
///
/// # Panics
///
/// Pushing a header panics when the names and values would exceed 4 GiB.
#[derive(Clone, Default)]
pub struct Headers {
    /// Each header's stored name (if any) and value, back to back, in order.
    bytes: Vec<u8>,
    entries: Vec<Entry>,
}

#[derive(Clone, Copy)]
struct Entry {
    /// `KNOWN` and up: one of choreo's names, not stored, and the value starts where the
    /// header before ended. Below: the stored name starts there and ends here, and the
    /// value follows it.
    name: u32,
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
                self.bytes.extend_from_slice(name.as_bytes());
                let name_end = self.offset();
                self.push_value(name_end, value);
            }
        }
    }

    /// Appends `BINARY_HEADERS[index]`'s header with `value`.
    pub(super) fn push_known(&mut self, index: usize, value: &[u8]) {
        debug_assert!(index < BINARY_HEADERS.len());
        self.push_value(KNOWN + index as u32, value);
    }

    fn push_value(&mut self, name: u32, value: &[u8]) {
        self.bytes.extend_from_slice(value);
        let value_end = self.offset();
        self.entries.push(Entry { name, value_end });
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
            front: 0,
            back: self.entries.len(),
        }
    }

    /// Every header: its name, its index in `BINARY_HEADERS` when it is one of choreo's, and
    /// its value as text where it is UTF-8. Values are checked all at once: when the buffer is
    /// text, a value that is not empty is text exactly when it starts and ends between
    /// characters, which is cheaper than checking a dozen short values one by one. (An empty
    /// value is text wherever it lies, even between the bytes of one character.)
    pub(super) fn texts(&self) -> impl Iterator<Item = (&str, Option<usize>, Option<&str>)> {
        let all = std::str::from_utf8(&self.bytes).ok();
        (0..self.entries.len()).map(move |index| {
            let (name, known, value) = self.spans(index);
            let text = match all {
                _ if value.is_empty() => Some(""),
                Some(all) => all.get(value.clone()),
                None => std::str::from_utf8(&self.bytes[value]).ok(),
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

    fn read(&self, index: usize) -> (&str, &[u8]) {
        let (name, _, value) = self.spans(index);
        (name, &self.bytes[value])
    }

    /// The name of the `index`-th header, its index in `BINARY_HEADERS` if it is one of
    /// choreo's, and where its value lies in `bytes`.
    fn spans(&self, index: usize) -> (&str, Option<usize>, Range<usize>) {
        let start = match index {
            0 => 0,
            _ => self.entries[index - 1].value_end as usize,
        };
        let entry = self.entries[index];
        let end = entry.value_end as usize;
        if entry.name >= KNOWN {
            let known = (entry.name - KNOWN) as usize;
            (BINARY_HEADERS[known].1, Some(known), start..end)
        } else {
            let name_end = entry.name as usize;
            // Stored names were pushed as `&str`; the check is a formality that cannot fail.
            let name = std::str::from_utf8(&self.bytes[start..name_end]).unwrap_or_default();
            (name, None, name_end..end)
        }
    }
}

/// The headers of a [`Headers`], in order: see [`Headers::iter`].
#[derive(Clone)]
pub struct Iter<'a> {
    headers: &'a Headers,
    /// The next header from the front, and one past the next from the back.
    front: usize,
    back: usize,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a str, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.front == self.back {
            return None;
        }
        self.front += 1;
        Some(self.headers.read(self.front - 1))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.back - self.front;
        (left, Some(left))
    }
}

impl DoubleEndedIterator for Iter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        if self.front == self.back {
            return None;
        }
        self.back -= 1;
        Some(self.headers.read(self.back))
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
