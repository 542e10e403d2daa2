//! The handshake: HELLO both ways, then (with a secret) AUTH both ways.
//!
//! HELLO payload (45 bytes, integers little-endian):
//!
//! ```text
//! offset size field
//!   0     2   lowest protocol version the sender speaks
//!   2     2   highest protocol version the sender speaks
//!   4     8   sender node id (non-zero)
//!  12    32   sender nonce (fresh random bytes per connection)
//!  44     1   flags: bit 0 = the sender has a cluster secret, other bits 0
//! ```
//!
//! AUTH payload: 32 bytes, HMAC-SHA256 under the cluster secret of
//! `AUTH_LABEL ‖ role ‖ version ‖ sender id ‖ receiver id ‖ sender nonce ‖
//! receiver nonce` (ids and version little-endian, role `D` for the side
//! that dialed, `A` for the side that accepted). The receiver's fresh nonce
//! makes a recorded AUTH useless on a new connection; the role byte and the
//! id order make an AUTH reflected back at its sender fail.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::{HashSet, VecDeque};

/// Protocol versions this build speaks. Version 2 added READY and REFUSE
/// (a side is ready only once the peer accepted it too); a version 1 peer
/// never sends READY, so it is refused by version instead.
pub const PROTOCOL_MIN: u16 = 2;
pub const PROTOCOL_MAX: u16 = 2;
pub const NONCE_LEN: usize = 32;
pub const HELLO_LEN: usize = 45;
pub const MAC_LEN: usize = 32;
const FLAG_SECRET: u8 = 1;
const AUTH_LABEL: &[u8] = b"keel-node-auth/1";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    pub min_version: u16,
    pub max_version: u16,
    pub node_id: u64,
    pub nonce: [u8; NONCE_LEN],
    pub has_secret: bool,
}

impl Hello {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HELLO_LEN);
        out.extend_from_slice(&self.min_version.to_le_bytes());
        out.extend_from_slice(&self.max_version.to_le_bytes());
        out.extend_from_slice(&self.node_id.to_le_bytes());
        out.extend_from_slice(&self.nonce);
        out.push(if self.has_secret { FLAG_SECRET } else { 0 });
        out
    }

    /// Parses a HELLO payload; the error says what is wrong with it.
    pub fn decode(b: &[u8]) -> Result<Hello, String> {
        if b.len() != HELLO_LEN {
            return Err(format!("HELLO payload is {} bytes, expected {HELLO_LEN}", b.len()));
        }
        let flags = b[44];
        if flags & !FLAG_SECRET != 0 {
            return Err(format!("HELLO flags {flags:#04x} has reserved bits set"));
        }
        let hello = Hello {
            min_version: u16::from_le_bytes([b[0], b[1]]),
            max_version: u16::from_le_bytes([b[2], b[3]]),
            node_id: u64::from_le_bytes(b[4..12].try_into().expect("8 bytes")),
            nonce: b[12..44].try_into().expect("32 bytes"),
            has_secret: flags & FLAG_SECRET != 0,
        };
        if hello.min_version > hello.max_version {
            return Err(format!("HELLO version range {}..={} is empty", hello.min_version, hello.max_version));
        }
        if hello.node_id == 0 {
            return Err("HELLO node id is 0".into());
        }
        Ok(hello)
    }
}

/// The highest version both ranges contain, if any.
pub fn negotiate(peer: &Hello) -> Option<u16> {
    let v = PROTOCOL_MAX.min(peer.max_version);
    (v >= PROTOCOL_MIN.max(peer.min_version)).then_some(v)
}

/// Which end of the TCP connection a side is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Dialer,
    Acceptor,
}

/// Everything an AUTH MAC covers, seen from the side that sends it.
#[derive(Clone, Copy, Debug)]
pub struct Transcript<'a> {
    pub sender_role: Role,
    pub version: u16,
    pub sender: &'a Hello,
    pub receiver: &'a Hello,
}

impl Transcript<'_> {
    fn mac(&self, secret: &[u8]) -> Hmac<Sha256> {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes keys of any length");
        m.update(AUTH_LABEL);
        m.update(&[match self.sender_role {
            Role::Dialer => b'D',
            Role::Acceptor => b'A',
        }]);
        m.update(&self.version.to_le_bytes());
        m.update(&self.sender.node_id.to_le_bytes());
        m.update(&self.receiver.node_id.to_le_bytes());
        m.update(&self.sender.nonce);
        m.update(&self.receiver.nonce);
        m
    }

    /// The AUTH payload the sender sends, made with `secret`.
    pub fn sign(&self, secret: &[u8]) -> [u8; MAC_LEN] {
        self.mac(secret).finalize().into_bytes().into()
    }

    /// True when `tag` was made with one of `secrets` (constant-time compare).
    pub fn verify(&self, secrets: &[Vec<u8>], tag: &[u8]) -> bool {
        secrets.iter().any(|s| self.mac(s).verify_slice(tag).is_ok())
    }
}

/// Fresh random bytes from the kernel (getrandom(2)).
pub fn nonce() -> std::io::Result<[u8; NONCE_LEN]> {
    let mut n = [0u8; NONCE_LEN];
    let mut at = 0;
    while at < n.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `n`,
        // which lives for the whole call.
        let r = unsafe { libc::getrandom(n[at..].as_mut_ptr() as *mut libc::c_void, n.len() - at, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        at += r as usize;
    }
    Ok(n)
}

/// The nonces of the last `cap` HELLOs a node received: a HELLO that
/// repeats one is a replayed handshake and is refused as such.
pub struct ReplayGuard {
    seen: HashSet<[u8; NONCE_LEN]>,
    order: VecDeque<[u8; NONCE_LEN]>,
    cap: usize,
}

impl ReplayGuard {
    pub fn new(cap: usize) -> ReplayGuard {
        ReplayGuard { seen: HashSet::new(), order: VecDeque::new(), cap }
    }

    /// False when `nonce` was seen before; otherwise remembers it.
    pub fn first_time(&mut self, nonce: &[u8; NONCE_LEN]) -> bool {
        if !self.seen.insert(*nonce) {
            return false;
        }
        self.order.push_back(*nonce);
        if self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(id: u64, fill: u8) -> Hello {
        Hello { min_version: PROTOCOL_MIN, max_version: PROTOCOL_MAX, node_id: id, nonce: [fill; NONCE_LEN], has_secret: true }
    }

    #[test]
    fn hello_round_trip_and_rejects() {
        let h = hello(7, 3);
        assert_eq!(Hello::decode(&h.encode()), Ok(h));
        assert!(Hello::decode(&h.encode()[1..]).is_err());
        let mut b = h.encode();
        b[44] = 2;
        assert!(Hello::decode(&b).is_err());
        assert!(Hello::decode(&hello(0, 1).encode()).is_err());
        assert_eq!(negotiate(&Hello { min_version: PROTOCOL_MAX + 1, max_version: 9, ..h }), None);
        assert_eq!(negotiate(&Hello { min_version: 1, max_version: 1, ..h }), None, "version 1 has no READY");
    }

    #[test]
    fn mac_binds_direction_nonces_and_secret() {
        let (a, b) = (hello(1, 1), hello(2, 2));
        let secrets = vec![b"old secret 0123456789".to_vec(), b"new secret 0123456789".to_vec()];
        let t = Transcript { sender_role: Role::Dialer, version: PROTOCOL_MAX, sender: &a, receiver: &b };
        assert!(t.verify(&secrets, &t.sign(&secrets[1])), "either secret is accepted");
        assert!(!t.verify(&secrets[..1], &t.sign(b"another secret 0123")));
        let reflected = Transcript { sender_role: Role::Acceptor, version: PROTOCOL_MAX, sender: &b, receiver: &a };
        assert!(!reflected.verify(&secrets, &t.sign(&secrets[0])));
        let b2 = hello(2, 9);
        let fresh = Transcript { receiver: &b2, ..t };
        assert!(!fresh.verify(&secrets, &t.sign(&secrets[0])), "a recorded MAC fails against a new nonce");
    }

    #[test]
    fn replay_guard_is_bounded() {
        let mut g = ReplayGuard::new(2);
        assert!(g.first_time(&[1; 32]));
        assert!(!g.first_time(&[1; 32]));
        assert!(g.first_time(&[2; 32]));
        assert!(g.first_time(&[3; 32]));
        assert!(g.first_time(&[1; 32]), "the oldest nonce was forgotten");
    }
}
