//! The engine as the server sees it: loading, then warming up, then the running scheduler.

use std::sync::{Mutex, MutexGuard, PoisonError};

use moebox_engine::scheduler::{EngineHandle, Submission};
use moebox_protocol::{
    EngineState, ErrorBody, ErrorCode, GenerateRequest, Health, Load, telemetry::TelemetryBatch,
};
use moebox_telemetry::TelemetryLog;

use crate::{LOADING_RETRY_AFTER_SECONDS, http::Backend};

#[derive(Debug)]
enum Phase {
    Loading,
    Warming,
    Running(EngineHandle),
}

/// The server's backend from the moment the socket is bound: answers health, readiness and
/// telemetry while the model loads, and serves once the scheduler runs.
#[derive(Debug)]
pub struct EngineSlot {
    model: String,
    state: Mutex<(Phase, String)>,
    telemetry: TelemetryLog,
}

impl EngineSlot {
    /// `model` as `/v1/models` lists it (the folder's name); `device` as configured (`cpu`,
    /// `cuda:N`) until the model says where it runs; `telemetry` the ring the sampler fills.
    pub fn new(
        model: impl Into<String>,
        device: impl Into<String>,
        telemetry: TelemetryLog,
    ) -> Self {
        Self {
            model: model.into(),
            state: Mutex::new((Phase::Loading, device.into())),
            telemetry,
        }
    }

    /// The model is loaded on `device`; the warm-up runs.
    pub fn warming(&self, device: impl Into<String>) {
        *self.lock() = (Phase::Warming, device.into());
    }

    pub fn running(&self, handle: EngineHandle) {
        self.lock().0 = Phase::Running(handle);
    }

    fn lock(&self) -> MutexGuard<'_, (Phase, String)> {
        // A panic elsewhere while holding the lock leaves a whole value behind: keep serving.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn handle(&self) -> Option<EngineHandle> {
        match &self.lock().0 {
            Phase::Running(handle) => Some(handle.clone()),
            _ => None,
        }
    }

    fn state(&self) -> EngineState {
        match &self.lock().0 {
            Phase::Loading => EngineState::Loading,
            Phase::Warming => EngineState::Warming,
            // A scheduler thread that ended without a drain (a panic) must not look ready; under
            // systemd its silent watchdog also gets the process restarted.
            Phase::Running(handle) if !handle.is_running() => EngineState::Draining,
            Phase::Running(handle) => handle.state(),
        }
    }
}

impl Backend for EngineSlot {
    type Events = Submission;

    fn submit(&self, request: GenerateRequest) -> Result<Submission, ErrorBody> {
        match self.handle() {
            Some(handle) => handle.submit(request).map_err(|refusal| refusal.0),
            None => Err(ErrorBody {
                message: format!(
                    "the engine is {}",
                    if self.state() == EngineState::Warming {
                        "warming up"
                    } else {
                        "loading the model"
                    }
                ),
                code: ErrorCode::Unavailable,
                param: None,
                retry_after_seconds: Some(LOADING_RETRY_AFTER_SECONDS),
            }),
        }
    }

    fn health(&self) -> Health {
        let device = self.lock().1.clone();
        Health {
            state: self.state(),
            model: self.model.clone(),
            device,
        }
    }

    fn load(&self) -> Option<Load> {
        self.handle().map(|handle| handle.load())
    }

    fn telemetry(&self, since: u64) -> TelemetryBatch {
        self.telemetry.since(since)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use moebox_protocol::Prompt;

    use super::*;

    fn log() -> TelemetryLog {
        TelemetryLog::new("test", Duration::from_secs(5), 4)
    }

    #[test]
    fn before_the_scheduler_runs_requests_are_refused_with_retry_after() {
        let slot = EngineSlot::new("tiny-moe", "cuda:1", log());
        assert_eq!(
            slot.health(),
            Health {
                state: EngineState::Loading,
                model: "tiny-moe".into(),
                device: "cuda:1".into()
            }
        );
        assert_eq!(slot.load(), None);
        let refusal = slot
            .submit(GenerateRequest::new(Prompt::Text("hi".into())))
            .expect_err("refused");
        assert_eq!(refusal.code, ErrorCode::Unavailable);
        assert_eq!(
            refusal.retry_after_seconds,
            Some(LOADING_RETRY_AFTER_SECONDS)
        );
        assert!(refusal.message.contains("loading"), "{}", refusal.message);

        slot.warming("cpu");
        let health = slot.health();
        assert_eq!(
            (health.state, health.device.as_str()),
            (EngineState::Warming, "cpu")
        );
        let refusal = slot
            .submit(GenerateRequest::new(Prompt::Text("hi".into())))
            .expect_err("refused");
        assert!(refusal.message.contains("warming"), "{}", refusal.message);
    }

    #[test]
    fn telemetry_is_served_while_the_model_loads() {
        let telemetry = log();
        let slot = EngineSlot::new("tiny-moe", "cpu", telemetry.clone());
        let reading = moebox_protocol::telemetry::Reading::Unavailable {
            tried: moebox_protocol::telemetry::SourceKind::Rapl,
            kind: moebox_protocol::telemetry::UnavailableKind::NotSupported,
            reason: "no powercap".into(),
        };
        telemetry.push(1, Duration::ZERO, reading.clone());
        assert_eq!(slot.health().state, EngineState::Loading);
        let batch = slot.telemetry(0);
        assert_eq!((batch.instance.as_str(), batch.latest_seq), ("test", 1));
        assert_eq!(batch.samples[0].reading, reading);
        assert!(slot.telemetry(1).samples.is_empty());
    }
}
