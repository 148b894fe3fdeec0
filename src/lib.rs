//! ponte: a self-hosted P2P chat appliance — web client, WebSocket signaling and an embedded STUN/TURN relay in one daemon.

pub mod acme;
pub mod addr;
pub mod challenges;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod credentials;
pub mod doctor;
pub mod health;
pub mod http;
pub mod limits;
pub mod listeners;
pub mod live;
pub mod logging;
pub mod metrics;
pub mod pem;
pub mod server;
pub mod signaling;
pub mod systemd;
pub mod tls;
pub mod turn;

pub use server::{run, Daemon, Listeners};
