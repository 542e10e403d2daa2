//! The consensus facts the host feeds keel for one shard, and the quorum
//! ack keel computes from them.
//!
//! keel never runs consensus. The host's engine (etcd raft, ...) reports
//! its role and term, which peers acknowledged which heartbeat or append
//! (stamped with the time the leader SENT it), the voter set, the applied
//! index, that an entry of its own term has been applied, and leadership
//! transfers. Every change of term, and every loss of leadership, forgets
//! the acks: an ack only ever proves leadership for the term it was sent in.

use crate::error::{Error, Result};
use std::collections::HashMap;

/// A consensus peer's id, as the host's engine numbers them.
pub type PeerId = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Not the leader (follower, candidate, learner, or not yet known).
    Follower,
    Leader,
}

/// Why an ack was not recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckIgnored {
    /// This node is not the leader: acks mean nothing.
    NotLeader,
    /// The ack is for another term than the current one.
    OtherTerm,
    /// The peer is not a voter of the current configuration (a learner, a
    /// removed peer, or this node itself).
    NotVoter,
    /// Send time zero, after "now", before this node was reported leader
    /// of the term, or no valid "now" to compare with.
    BadTime,
}

/// The voters: `incoming` always (empty only before the host reports
/// them), `outgoing` too during a joint configuration (empty otherwise).
/// Learners are never listed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Voters {
    pub incoming: Vec<PeerId>,
    pub outgoing: Vec<PeerId>,
}

impl Voters {
    fn contains(&self, p: PeerId) -> bool {
        self.incoming.contains(&p) || self.outgoing.contains(&p)
    }

    fn validate(&self) -> Result<()> {
        if self.incoming.is_empty() {
            return Err(Error::invalid("the voter set is empty"));
        }
        for (name, half) in [("incoming", &self.incoming), ("outgoing", &self.outgoing)] {
            let mut sorted = half.clone();
            sorted.sort_unstable();
            if sorted.windows(2).any(|w| w[0] == w[1]) {
                return Err(Error::invalid(format!("the {name} voters list a peer twice")));
            }
        }
        Ok(())
    }
}

/// Sentinel for "this node itself" in a half: it counts at `now`, which is
/// at or after every recorded ack (acks after "now" are refused).
const SELF_AT_NOW: u64 = u64::MAX;

/// The consensus facts of one shard.
#[derive(Clone, Debug)]
pub struct ConsensusState {
    self_id: PeerId,
    role: Role,
    term: u64,
    leader: Option<PeerId>,
    voters: Voters,
    /// Per voter: the latest send time (of the current term) it acked.
    acks: HashMap<PeerId, u64>,
    applied: u64,
    /// The commit index as this node knows it (0 when the host does not report it).
    committed: u64,
    /// An entry of the current term has been applied (leaders only).
    term_applied: bool,
    transfer: bool,
    /// Cached quorum ack (`SELF_AT_NOW` when this node alone is a quorum of
    /// every half); `None` when some half lacks a majority of acks.
    quorum: Option<u64>,
    /// The latest time the clock was read at (0: never). A clock that
    /// goes back below it must not make acks look younger than the clock
    /// already showed them to be.
    latest_now: u64,
    /// `latest_now` when this node was reported leader of the current
    /// term. A message sent before then was not this leadership's
    /// heartbeat or append (a vote reply a host counted as an ack, say):
    /// its ack restarted no voter's election timer for this leader.
    leader_since: u64,
}

impl ConsensusState {
    /// A follower of term 0 with no voters known: until the host reports
    /// them there is no quorum ack (assuming this node the only voter
    /// would let a leader of a larger group lease with nobody's ack).
    pub fn new(self_id: PeerId) -> ConsensusState {
        let mut s = ConsensusState {
            self_id,
            role: Role::Follower,
            term: 0,
            leader: None,
            voters: Voters::default(),
            acks: HashMap::new(),
            applied: 0,
            committed: 0,
            term_applied: false,
            transfer: false,
            quorum: None,
            latest_now: 0,
            leader_since: 0,
        };
        s.recompute();
        s
    }

    pub fn self_id(&self) -> PeerId {
        self.self_id
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn term(&self) -> u64 {
        self.term
    }
    /// The leader when known: this node when it leads, else the host's hint.
    pub fn leader(&self) -> Option<PeerId> {
        self.leader
    }
    /// Where a refused read should go: the leader when known and not this
    /// node. A leader whose host's read-index call said NOT_LEADER before
    /// the step-down was reported knows no other leader; naming itself
    /// would send the client back.
    pub fn leader_elsewhere(&self) -> Option<PeerId> {
        self.leader.filter(|&l| l != self.self_id)
    }
    pub fn applied(&self) -> u64 {
        self.applied
    }
    pub fn committed(&self) -> u64 {
        self.committed
    }
    pub fn term_applied(&self) -> bool {
        self.term_applied
    }
    pub fn transfer_in_progress(&self) -> bool {
        self.transfer
    }
    /// The latest time the clock was read at (see `note_now`).
    pub fn latest_now(&self) -> u64 {
        self.latest_now
    }

    /// Remembers a reading of the clock: a later one below it means the
    /// clock went back, and the lease gate misses until it passes again.
    pub fn note_now(&mut self, now: u64) {
        self.latest_now = self.latest_now.max(now);
    }

    /// Role and term. Terms never go back, and a leader's is at least 1
    /// (INVALID_ARGUMENT). A new term,
    /// or leaving the leader role, forgets every ack, the "own-term entry
    /// applied" fact and any transfer in progress. `leader` is the hint of
    /// a follower (ignored for a leader: it is this node); one naming this
    /// node is no hint (a stale one: this node does not lead). Becoming
    /// leader of a term marks the latest noted time (see `note_now`): acks
    /// of messages sent before it are ignored.
    pub fn set_role(&mut self, role: Role, term: u64, leader: Option<PeerId>) -> Result<()> {
        if term < self.term {
            return Err(Error::invalid(format!("term {term} is older than the current term {}", self.term)));
        }
        // Term 0 comes before any election (the state starts there), and
        // is what an unset term reads as: acks and an own-term entry of it
        // would make a lease from facts of no real term.
        if role == Role::Leader && term == 0 {
            return Err(Error::invalid("a leader of term 0: no election happens in term 0 (leaders' terms start at 1)"));
        }
        let lost_or_new = term != self.term || role != self.role;
        if lost_or_new {
            self.acks.clear();
            self.term_applied = false;
            self.transfer = false;
            self.leader_since = self.latest_now;
        }
        self.role = role;
        self.term = term;
        self.leader = match role {
            Role::Leader => Some(self.self_id),
            Role::Follower => leader.filter(|&l| l != self.self_id),
        };
        self.recompute();
        Ok(())
    }

    /// Replaces the voter set (both halves of a joint configuration).
    /// Acks of peers that are no longer voters are dropped.
    pub fn set_voters(&mut self, voters: Voters) -> Result<()> {
        voters.validate()?;
        self.acks.retain(|p, _| voters.contains(*p));
        self.voters = voters;
        self.recompute();
        Ok(())
    }

    /// Records that `peer` acknowledged a message of `term` that this
    /// leader sent at `sent_at`. Only the latest send time per peer is kept.
    pub fn record_ack(&mut self, peer: PeerId, term: u64, sent_at: u64, now: Option<u64>) -> std::result::Result<(), AckIgnored> {
        // Every accepted ack is at or before a noted time, so the gate's
        // "clock went back" check covers an ack after now as well.
        if let Some(now) = now {
            self.note_now(now);
        }
        if self.role != Role::Leader {
            return Err(AckIgnored::NotLeader);
        }
        if term != self.term {
            return Err(AckIgnored::OtherTerm);
        }
        if peer == self.self_id || !self.voters.contains(peer) {
            return Err(AckIgnored::NotVoter);
        }
        match now {
            Some(now) if sent_at != 0 && sent_at >= self.leader_since && sent_at <= now => {}
            _ => return Err(AckIgnored::BadTime),
        }
        // Below the quorum cache's "this node, at now" (a manual clock at
        // u64::MAX could otherwise stamp an ack that reads as now forever).
        let slot = self.acks.entry(peer).or_insert(0);
        *slot = (*slot).max(sent_at.min(SELF_AT_NOW - 1));
        self.recompute();
        Ok(())
    }

    /// The applied index; it never goes back (INVALID_ARGUMENT).
    pub fn set_applied(&mut self, index: u64) -> Result<()> {
        if index < self.applied {
            return Err(Error::invalid(format!("applied index {index} is below {}", self.applied)));
        }
        self.applied = index;
        Ok(())
    }

    /// The commit index; it never goes back (INVALID_ARGUMENT). Lease reads
    /// wait until the applied index reaches it.
    pub fn set_committed(&mut self, index: u64) -> Result<()> {
        if index < self.committed {
            return Err(Error::invalid(format!("commit index {index} is below {}", self.committed)));
        }
        self.committed = index;
        Ok(())
    }

    /// The host applied an entry of `term`. Counts only when this node
    /// leads `term`; returns whether it counted.
    pub fn note_term_applied(&mut self, term: u64) -> bool {
        let counts = self.role == Role::Leader && term == self.term;
        self.term_applied |= counts;
        counts
    }

    /// A leadership transfer started (suspends the lease) or ended. The
    /// suspension lasts until leadership or the term changes, whatever
    /// the host reports after: a transfer raft abandons leaves its
    /// MsgTimeoutNow out there, and the target may still act on it (the
    /// voters grant a transfer campaign at once). A transfer means
    /// nothing on a follower.
    pub fn set_transfer(&mut self, in_progress: bool) {
        self.transfer |= in_progress && self.role == Role::Leader;
    }

    /// These facts as a gate that ignored transfers would hold them (the
    /// lease tests' broken variant).
    #[cfg(test)]
    pub fn forget_transfer(&mut self) {
        self.transfer = false;
    }

    /// The quorum ack at `now`: the latest time T such that a majority of
    /// EACH half of the voter set acked a message sent at or after T, this
    /// node counting at `now` where it is a voter. `None` when a half has
    /// no such majority.
    pub fn quorum_ack(&self, now: u64) -> Option<u64> {
        self.quorum.map(|q| if q == SELF_AT_NOW { now } else { q })
    }

    fn half_quorum(&self, half: &[PeerId]) -> Option<u64> {
        let mut times: Vec<u64> = half
            .iter()
            .filter_map(|&p| if p == self.self_id { Some(SELF_AT_NOW) } else { self.acks.get(&p).copied() })
            .collect();
        let majority = half.len() / 2 + 1;
        if times.len() < majority {
            return None;
        }
        times.sort_unstable_by(|a, b| b.cmp(a));
        Some(times[majority - 1])
    }

    fn recompute(&mut self) {
        let incoming = self.half_quorum(&self.voters.incoming);
        self.quorum = match self.voters.outgoing.is_empty() {
            true => incoming,
            false => incoming.zip(self.half_quorum(&self.voters.outgoing)).map(|(a, b)| a.min(b)),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader(self_id: PeerId, incoming: &[PeerId], outgoing: &[PeerId]) -> ConsensusState {
        let mut s = ConsensusState::new(self_id);
        s.set_voters(Voters { incoming: incoming.to_vec(), outgoing: outgoing.to_vec() }).unwrap();
        s.set_role(Role::Leader, 3, None).unwrap();
        s
    }

    #[test]
    fn the_quorum_ack_is_the_majority_th_latest_with_the_leader_at_now() {
        let mut s = leader(1, &[1, 2, 3, 4, 5], &[]);
        assert_eq!(s.quorum_ack(100), None, "the leader alone is not a majority of 5");
        s.record_ack(2, 3, 40, Some(100)).unwrap();
        assert_eq!(s.quorum_ack(100), None);
        s.record_ack(3, 3, 60, Some(100)).unwrap();
        assert_eq!(s.quorum_ack(100), Some(40), "leader(now), 60, 40: the third latest");
        s.record_ack(4, 3, 90, Some(100)).unwrap();
        assert_eq!(s.quorum_ack(100), Some(60));
        // An older ack arriving late never lowers a peer's time.
        s.record_ack(4, 3, 10, Some(100)).unwrap();
        assert_eq!(s.quorum_ack(100), Some(60));
    }

    #[test]
    fn a_single_voter_leader_is_its_own_quorum() {
        let s = leader(7, &[7], &[]);
        assert_eq!(s.quorum_ack(55), Some(55));
    }

    #[test]
    fn a_joint_configuration_needs_a_majority_of_each_half() {
        // Old {1,2,3}, new {1,4,5}: fresh acks from 2 and 3 satisfy only the old half.
        let mut s = leader(1, &[1, 4, 5], &[1, 2, 3]);
        s.record_ack(2, 3, 80, Some(100)).unwrap();
        s.record_ack(3, 3, 90, Some(100)).unwrap();
        assert_eq!(s.quorum_ack(100), None, "the incoming half has only the leader");
        s.record_ack(4, 3, 20, Some(100)).unwrap();
        assert_eq!(s.quorum_ack(100), Some(20), "the older of the two halves' quorum acks");
        // Leaving the joint configuration drops acks of removed peers.
        s.set_voters(Voters { incoming: vec![1, 4, 5], outgoing: vec![] }).unwrap();
        assert_eq!(s.quorum_ack(100), Some(20));
        s.set_voters(Voters { incoming: vec![1, 2, 3], outgoing: vec![] }).unwrap();
        assert_eq!(s.quorum_ack(100), None, "acks of 2 and 3 were dropped when they left");
    }

    #[test]
    fn a_leader_outside_the_incoming_half_counts_only_where_it_votes() {
        let mut s = leader(1, &[2, 3, 4], &[1, 2, 3]);
        s.record_ack(2, 3, 50, Some(100)).unwrap();
        assert_eq!(s.quorum_ack(100), None, "one of three in the incoming half");
        s.record_ack(4, 3, 70, Some(100)).unwrap();
        assert_eq!(s.quorum_ack(100), Some(50));
    }

    #[test]
    fn learners_removed_peers_old_terms_and_future_stamps_are_ignored() {
        let mut s = leader(1, &[1, 2, 3], &[]);
        assert_eq!(s.record_ack(9, 3, 50, Some(100)), Err(AckIgnored::NotVoter), "9 is a learner");
        assert_eq!(s.record_ack(1, 3, 50, Some(100)), Err(AckIgnored::NotVoter), "the leader itself");
        assert_eq!(s.record_ack(2, 2, 50, Some(100)), Err(AckIgnored::OtherTerm));
        assert_eq!(s.record_ack(2, 3, 101, Some(100)), Err(AckIgnored::BadTime));
        assert_eq!(s.record_ack(2, 3, 0, Some(100)), Err(AckIgnored::BadTime));
        assert_eq!(s.record_ack(2, 3, 50, None), Err(AckIgnored::BadTime));
        assert_eq!(s.quorum_ack(100), None);
    }

    #[test]
    fn a_new_term_or_lost_leadership_forgets_acks_and_the_own_term_entry() {
        let mut s = leader(1, &[1, 2, 3], &[]);
        s.record_ack(2, 3, 50, Some(100)).unwrap();
        assert!(s.note_term_applied(3));
        s.set_transfer(true);
        s.set_role(Role::Follower, 3, Some(2)).unwrap();
        assert_eq!((s.quorum_ack(100), s.term_applied(), s.transfer_in_progress()), (None, false, false));
        assert_eq!((s.leader(), s.leader_elsewhere()), (Some(2), Some(2)));
        s.set_role(Role::Follower, 3, Some(1)).unwrap();
        assert_eq!((s.leader(), s.leader_elsewhere()), (None, None), "a hint naming this node is no hint");
        assert_eq!(s.record_ack(2, 3, 60, Some(100)), Err(AckIgnored::NotLeader));
        s.set_role(Role::Leader, 4, None).unwrap();
        assert!(!s.note_term_applied(3), "an entry of an older term does not count");
        assert_eq!(s.record_ack(2, 3, 60, Some(100)), Err(AckIgnored::OtherTerm));
        // Leading term 4 since the clock read 100.
        assert_eq!(s.record_ack(2, 4, 60, Some(150)), Err(AckIgnored::BadTime), "sent before this node led");
        s.record_ack(2, 4, 120, Some(150)).unwrap();
        // Same role and term again (a repeated report) keeps everything.
        s.set_role(Role::Leader, 4, None).unwrap();
        assert_eq!(s.quorum_ack(150), Some(120));
        assert_eq!(s.set_role(Role::Leader, 3, None).unwrap_err().status, crate::status::KEEL_STATUS_INVALID_ARGUMENT);
    }

    #[test]
    fn bad_voter_sets_and_a_shrinking_applied_index_are_refused() {
        let mut s = ConsensusState::new(1);
        assert!(s.set_voters(Voters::default()).is_err());
        assert!(s.set_voters(Voters { incoming: vec![1, 2, 2], outgoing: vec![] }).is_err());
        s.set_applied(10).unwrap();
        assert!(s.set_applied(9).is_err());
        assert_eq!(s.applied(), 10);
        s.set_committed(12).unwrap();
        assert!(s.set_committed(11).is_err());
        assert_eq!(s.committed(), 12);
    }
}
