//! tswatch-core: streaming anomaly detection for multichannel time series.
//!
//! Pure: no I/O, no async, no clocks. The service crate feeds rows in and
//! persists [`EngineState`]; everything statistical lives here.
//!
//! ```
//! use tswatch_core::{Engine, EngineConfig};
//! let mut engine = Engine::new(EngineConfig::default()).unwrap();
//! let b = engine.bind(&["temperature"]);
//! for i in 0..100 {
//!     let row = [Some(20.0 + (i % 5) as f64 * 0.1)];
//!     let s = engine.score(&b, None, &row);   // judged against the past only
//!     engine.update(&b, None, &row, &s);      // then absorbed if normal
//! }
//! let spike = [Some(35.0)];
//! let s = engine.score(&b, None, &spike);
//! assert!(s.anomaly());
//! assert!(s.reason(&["temperature"]).starts_with("temperature above the highest seen"));
//! ```

mod channel;
mod config;
mod detector;
mod engine;
mod error;
mod forest;
mod joint;
mod score;
mod state;
mod stats;

pub use channel::{ChannelState, Moment};
pub use config::EngineConfig;
pub use detector::{Band, DailyBand, Detector, Finding, Thresholds, Verdict};
pub use engine::{Binding, Engine, ForestView, LoadError};
pub use error::{ChannelLimit, ConfigError, StateError};
pub use forest::SplitMix64;
pub use score::{ForestVerdict, JointFinding, RowScore};
pub use state::{EngineState, ForestRecipe, History};
pub use stats::Welford;
