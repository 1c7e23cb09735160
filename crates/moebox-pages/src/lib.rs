//! The admin pages, rendered as pure functions from plain input structs.
//!
//! No HTTP, no files, no clock: the gateway gathers the figures (the ledger, telemetry, the
//! cost model), calls one function per page and sends the string. Every page is one HTML
//! document with its CSS inline and its charts as inline SVG: the appliance has no internet,
//! so there are no external assets, and there is no JavaScript. The layout reflows for a phone
//! and has a print stylesheet, so the overview printed is the monthly report.
//!
//! Every string that comes from data (team, key, asset and GPU names, notes) goes through
//! [`escape`]; figures are formatted by `moebox-tco` and escaped too.

#![forbid(unsafe_code)]

pub mod charts;
mod gpus;
mod layout;
mod login;
mod overview;
mod schedule;
mod usage;

pub use gpus::{GpuHistory, GpuSample, GpuState, GpuStatus, GpusPage, gpus};
pub use layout::{Nav, escape};
pub use login::{LoginPage, login};
pub use overview::{DailyTokens, OverviewPage, overview};
pub use schedule::{SchedulePage, schedule};
pub use usage::{ExportLink, KeyUsage, TeamUsage, UsagePage, usage};

/// Where the gateway serves each page; the navigation links to these.
pub const PATH_OVERVIEW: &str = "/admin/";
pub const PATH_SCHEDULE: &str = "/admin/schedule";
pub const PATH_USAGE: &str = "/admin/usage";
pub const PATH_GPUS: &str = "/admin/gpus";
pub const PATH_LOGIN: &str = "/admin/login";
pub const PATH_LOGOUT: &str = "/admin/logout";
