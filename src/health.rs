//! Per-component health (http, signaling, turn) shared by the daemon's tasks and reported at `GET /healthz`.

use std::sync::atomic::{AtomicU8, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Starting = 0,
    Ok = 1,
    Disabled = 2,
    Failed = 3,
    Stopping = 4,
}

impl Status {
    fn from_u8(v: u8) -> Status {
        match v {
            1 => Status::Ok,
            2 => Status::Disabled,
            3 => Status::Failed,
            4 => Status::Stopping,
            _ => Status::Starting,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Starting => "starting",
            Status::Ok => "ok",
            Status::Disabled => "disabled",
            Status::Failed => "failed",
            Status::Stopping => "stopping",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Http,
    Signaling,
    Turn,
    /// The Redis link of a cluster node (`[cluster]`); disabled (and not shown) on a single node.
    Cluster,
}

impl Component {
    pub const ALL: [Component; 4] = [Component::Http, Component::Signaling, Component::Turn, Component::Cluster];
    pub fn name(self) -> &'static str {
        match self {
            Component::Http => "http",
            Component::Signaling => "signaling",
            Component::Turn => "turn",
            Component::Cluster => "cluster",
        }
    }
}

#[derive(Debug)]
pub struct Health {
    states: [AtomicU8; 4],
}

impl Default for Health {
    /// Every component starting, except the cluster link: a single node has none until `[cluster]` says so.
    fn default() -> Health {
        let h = Health { states: Default::default() };
        h.set(Component::Cluster, Status::Disabled);
        h
    }
}

impl Health {
    pub fn set(&self, c: Component, s: Status) {
        self.states[c as usize].store(s as u8, Ordering::Relaxed);
    }
    pub fn get(&self, c: Component) -> Status {
        Status::from_u8(self.states[c as usize].load(Ordering::Relaxed))
    }
    /// Healthy when every component is ok or deliberately disabled.
    pub fn healthy(&self) -> bool {
        Component::ALL.iter().all(|c| matches!(self.get(*c), Status::Ok | Status::Disabled))
    }
    pub fn to_json(&self) -> serde_json::Value {
        let mut components = serde_json::Map::new();
        for c in Component::ALL {
            if c == Component::Cluster && self.get(c) == Status::Disabled {
                // A single node reports exactly what it always did.
                continue;
            }
            components.insert(c.name().into(), self.get(c).as_str().into());
        }
        serde_json::json!({
            "status": if self.healthy() { "ok" } else { "degraded" },
            "version": env!("CARGO_PKG_VERSION"),
            "components": components,
        })
    }
}
