//! A set of byte ranges: what a write handle has written, and what it changed since its last
//! commit.

use std::collections::BTreeMap;

/// Disjoint, non-adjacent half-open ranges `[start, end)`, kept merged.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Ranges {
    /// start → end.
    map: BTreeMap<u64, u64>,
}

impl Ranges {
    /// Adds `[start, end)`, merging with what it overlaps or touches.
    pub(crate) fn insert(&mut self, mut start: u64, mut end: u64) {
        if start >= end {
            return;
        }
        if let Some((&s, &e)) = self.map.range(..=start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
            }
        }
        let swallowed: Vec<u64> = self.map.range(start..=end).map(|(&s, _)| s).collect();
        for s in swallowed {
            if let Some(e) = self.map.remove(&s) {
                end = end.max(e);
            }
        }
        self.map.insert(start, end);
    }

    /// Removes `[start, end)`, splitting a range that straddles it.
    pub(crate) fn remove(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let mut keep = Vec::new();
        let hit: Vec<(u64, u64)> = self
            .map
            .range(..end)
            .filter(|(_, &e)| e > start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in hit {
            self.map.remove(&s);
            if s < start {
                keep.push((s, start));
            }
            if e > end {
                keep.push((end, e));
            }
        }
        for (s, e) in keep {
            self.map.insert(s, e);
        }
    }

    /// Empties the set.
    pub(crate) fn clear(&mut self) {
        self.map.clear();
    }

    /// The ranges, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.map.iter().map(|(&s, &e)| (s, e))
    }

    /// Whether `[start, end)` lies wholly inside one range.
    pub(crate) fn covers(&self, start: u64, end: u64) -> bool {
        start >= end
            || self
                .map
                .range(..=start)
                .next_back()
                .is_some_and(|(_, &e)| e >= end)
    }

    /// `[start, end)` cut into consecutive pieces, each wholly inside the set (`true`) or
    /// wholly outside it (`false`).
    pub(crate) fn pieces(&self, start: u64, end: u64) -> Vec<(u64, u64, bool)> {
        let mut out = Vec::new();
        let mut at = start;
        let first = self
            .map
            .range(..=start)
            .next_back()
            .map(|(&s, _)| s)
            .unwrap_or(start);
        for (&s, &e) in self.map.range(first..end) {
            if e <= at {
                continue;
            }
            if s > at {
                out.push((at, s, false));
            }
            let stop = e.min(end);
            out.push((at.max(s), stop, true));
            at = stop;
        }
        if at < end {
            out.push((at, end, false));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(r: &Ranges) -> Vec<(u64, u64)> {
        r.iter().collect()
    }

    #[test]
    fn ranges_merge_split_and_cut_into_pieces() {
        let mut r = Ranges::default();
        r.insert(10, 20);
        r.insert(30, 40);
        r.insert(20, 25);
        assert_eq!(set(&r), [(10, 25), (30, 40)], "touching ranges merge");
        r.insert(5, 35);
        assert_eq!(set(&r), [(5, 40)]);
        r.remove(10, 12);
        assert_eq!(set(&r), [(5, 10), (12, 40)]);
        r.remove(0, 6);
        r.remove(39, 100);
        assert_eq!(set(&r), [(6, 10), (12, 39)]);
        assert!(r.covers(13, 39) && !r.covers(9, 13) && r.covers(7, 7));
        assert_eq!(
            r.pieces(0, 50),
            [
                (0, 6, false),
                (6, 10, true),
                (10, 12, false),
                (12, 39, true),
                (39, 50, false)
            ]
        );
        assert_eq!(r.pieces(8, 13), [(8, 10, true), (10, 12, false), (12, 13, true)]);
        assert_eq!(r.pieces(40, 45), [(40, 45, false)]);
        r.clear();
        assert_eq!(r.iter().count(), 0);
    }
}
