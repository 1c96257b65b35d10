//! Connections per client address: no one address may hold more than its share of the
//! listener's connections, so one client's sockets cannot stop `accept` for everyone else.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The open connections of each client address, bounded.
#[derive(Clone)]
pub struct ClientSlots {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max: usize,
}

/// One connection's place; freed when dropped.
pub struct Slot {
    slots: ClientSlots,
    ip: IpAddr,
}

impl ClientSlots {
    /// At most `max` connections per address (at least 1).
    pub fn new(max: usize) -> Self {
        Self {
            open: Arc::default(),
            max: max.max(1),
        }
    }

    /// A place for one more connection from `ip`, or `None` when it holds its share already.
    pub fn take(&self, ip: IpAddr) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_default();
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot {
            slots: self.clone(),
            ip,
        })
    }

    /// How many addresses hold a connection now.
    pub fn addresses(&self) -> usize {
        self.open.lock().map(|o| o.len()).unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_holds_at_most_its_share_and_gets_it_back() {
        let slots = ClientSlots::new(2);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "::1".parse().unwrap();
        let (a1, a2) = (slots.take(a).unwrap(), slots.take(a).unwrap());
        assert!(slots.take(a).is_none(), "a third from the same address");
        let b1 = slots.take(b).unwrap();
        assert_eq!(slots.addresses(), 2);
        drop(a1);
        let a3 = slots.take(a).expect("a place was freed");
        drop((a2, a3, b1));
        assert_eq!(slots.addresses(), 0, "nothing is kept for a gone address");
    }
}
