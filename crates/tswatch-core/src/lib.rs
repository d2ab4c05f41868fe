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
//! assert!(s.anomaly);
//! assert!(s.reason(&["temperature"]).starts_with("temperature above the highest seen"));
//! ```

pub mod channel;
pub mod config;
pub mod detector;
pub mod engine;
pub mod error;
pub mod forest;
pub mod joint;
pub mod score;
pub mod state;
pub mod stats;

pub use channel::{ChannelState, Moment};
pub use config::EngineConfig;
pub use detector::{Band, DailyBand, Detector, Finding, Thresholds, Verdict};
pub use engine::{Binding, Engine, ForestView, LoadError};
pub use error::{ChannelLimit, ConfigError, StateError};
pub use score::{ForestVerdict, JointFinding, RowScore};
pub use state::{EngineState, ForestRecipe, History};
pub use stats::Welford;
