//! Exact loss, duplicate and reorder accounting for one connection's view of
//! one room, from the per-room sequence numbers (Herald's offsets).
//!
//! The tracker starts at the position the connection joined at (every
//! event after it is owed) and remembers the gaps it has seen as ranges, so
//! that a late event can be told apart from a duplicate: a late one fills
//! a gap (reordered), anything else at or below the newest seen is a
//! duplicate. What is owed and never came is the open gaps plus whatever
//! lies between the newest seen and the room's newest published offset.

/// What one observation was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The next expected sequence number.
    Next,
    /// Ahead of the expected one: this many were skipped (so far).
    Gap(u64),
    /// Behind the newest seen, filling a gap: delivered out of order.
    Late,
    /// Seen before (or before the start position).
    Duplicate,
}

/// Most distinct gaps remembered; beyond it the oldest are given up as lost.
const MAX_GAPS: usize = 4096;

#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    start: u64,
    last: u64,
    /// Inclusive ranges below `last` not seen yet, ascending, disjoint.
    gaps: Vec<(u64, u64)>,
    /// Events given up: gaps forgotten past `MAX_GAPS`, and positions the
    /// server skipped over on an unrecovered resume.
    skipped: u64,
    pub received: u64,
    pub duplicates: u64,
    pub reordered: u64,
}

impl SeqTracker {
    /// A tracker owed every event after `start`.
    pub fn new(start: u64) -> Self {
        Self {
            start,
            last: start,
            ..Self::default()
        }
    }

    /// The newest sequence number seen (or the start).
    pub fn last(&self) -> u64 {
        self.last
    }

    pub fn observe(&mut self, seq: u64) -> Seen {
        if seq == self.last + 1 {
            self.last = seq;
            self.received += 1;
            return Seen::Next;
        }
        if seq > self.last {
            let skipped = seq - self.last - 1;
            self.gaps.push((self.last + 1, seq - 1));
            if self.gaps.len() > MAX_GAPS {
                let (a, b) = self.gaps.remove(0);
                self.skipped += b - a + 1;
            }
            self.last = seq;
            self.received += 1;
            return Seen::Gap(skipped);
        }
        // At or below the newest: a gap being filled, or a duplicate.
        let i = self.gaps.partition_point(|&(_, end)| end < seq);
        match self.gaps.get(i).copied() {
            Some((a, b)) if a <= seq => {
                match (seq == a, seq == b) {
                    (true, true) => {
                        self.gaps.remove(i);
                    }
                    (true, false) => self.gaps[i].0 = seq + 1,
                    (false, true) => self.gaps[i].1 = seq - 1,
                    (false, false) => {
                        self.gaps[i].1 = seq - 1;
                        self.gaps.insert(i + 1, (seq + 1, b));
                    }
                }
                self.received += 1;
                self.reordered += 1;
                Seen::Late
            }
            _ => {
                self.duplicates += 1;
                Seen::Duplicate
            }
        }
    }

    /// Events inside the seen range that never arrived (or were given up).
    pub fn missing(&self) -> u64 {
        self.skipped + self.gaps.iter().map(|&(a, b)| b - a + 1).sum::<u64>()
    }

    /// Events owed up to `newest` (the room's newest published sequence
    /// number) that did not arrive.
    pub fn lost(&self, newest: u64) -> u64 {
        self.missing() + newest.saturating_sub(self.last)
    }

    /// Events owed in total up to `newest`.
    pub fn owed(&self, newest: u64) -> u64 {
        newest.max(self.last).saturating_sub(self.start)
    }

    /// The server continued from `position` without replaying what came
    /// before it (an unrecovered resume): everything owed up to it and not
    /// seen is lost, and counting goes on from there.
    pub fn skip_to(&mut self, position: u64) {
        if position > self.last {
            self.skipped += position - self.last;
            self.last = position;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_is_clean() {
        let mut t = SeqTracker::new(10);
        for s in 11..=20 {
            assert_eq!(t.observe(s), Seen::Next);
        }
        assert_eq!((t.received, t.duplicates, t.reordered, t.lost(20)), (10, 0, 0, 0));
        assert_eq!(t.owed(20), 10);
    }

    #[test]
    fn tail_not_yet_delivered_is_lost() {
        let mut t = SeqTracker::new(0);
        t.observe(1);
        t.observe(2);
        assert_eq!(t.lost(5), 3);
        assert_eq!(t.lost(2), 0);
    }

    #[test]
    fn gap_then_late_fill_is_a_reorder_not_a_loss() {
        let mut t = SeqTracker::new(0);
        assert_eq!(t.observe(1), Seen::Next);
        assert_eq!(t.observe(4), Seen::Gap(2));
        assert_eq!(t.lost(4), 2);
        assert_eq!(t.observe(3), Seen::Late);
        assert_eq!(t.observe(2), Seen::Late);
        assert_eq!((t.lost(4), t.reordered, t.duplicates, t.received), (0, 2, 0, 4));
    }

    #[test]
    fn late_fill_in_the_middle_of_a_gap_splits_it() {
        let mut t = SeqTracker::new(0);
        t.observe(10);
        assert_eq!(t.missing(), 9);
        assert_eq!(t.observe(5), Seen::Late);
        assert_eq!(t.missing(), 8);
        assert_eq!(t.observe(5), Seen::Duplicate);
        assert_eq!(t.observe(1), Seen::Late);
        assert_eq!(t.observe(9), Seen::Late);
        assert_eq!(t.missing(), 6);
        assert_eq!(t.gaps, vec![(2, 4), (6, 8)]);
    }

    #[test]
    fn duplicates_are_counted() {
        let mut t = SeqTracker::new(3);
        t.observe(4);
        assert_eq!(t.observe(4), Seen::Duplicate);
        assert_eq!(t.observe(2), Seen::Duplicate, "before the join position");
        assert_eq!((t.duplicates, t.received, t.lost(4)), (2, 1, 0));
    }

    #[test]
    fn unrecovered_resume_counts_the_skipped_events() {
        let mut t = SeqTracker::new(0);
        t.observe(1);
        t.skip_to(6);
        assert_eq!(t.lost(6), 5);
        assert_eq!(t.observe(7), Seen::Next);
        t.skip_to(3);
        assert_eq!(t.last(), 7, "never backwards");
    }

    #[test]
    fn gaps_beyond_the_cap_are_given_up_not_forgotten() {
        let mut t = SeqTracker::new(0);
        for i in 0..(MAX_GAPS as u64 + 10) {
            t.observe(2 * i + 2);
        }
        assert_eq!(t.gaps.len(), MAX_GAPS);
        assert_eq!(t.missing(), MAX_GAPS as u64 + 10);
        assert_eq!(
            t.observe(1),
            Seen::Duplicate,
            "given up: counted lost, a late arrival is a duplicate"
        );
    }
}
