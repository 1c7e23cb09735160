//! `STATUS=` lines to systemd (`sd_notify`): the shared implementation in `moebox-systemd`.

pub use moebox_systemd::Notifier;
