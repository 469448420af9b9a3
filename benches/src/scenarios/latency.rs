//! Latency: publishers paced to a fixed total rate (one per 50,000 msgs/s) into one
//! subscriber on one topic; measures p50, p99 and p99.9 latency at the subscriber.

use tern_codec::QoS;

use crate::error::{Error, Result};
use crate::run::{connect_many, run, Options, PubSpec, Shape};
use crate::stats::Report;

/// Highest rate one paced publisher is given.
const RATE_PER_PUBLISHER: f64 = 50_000.0;

pub async fn latency(opts: &Options, rate: f64, qos: QoS) -> Result<Report> {
    if !rate.is_finite() || rate <= 0.0 {
        return Err(Error::new("--rate must be positive"));
    }
    let publishers = (rate / RATE_PER_PUBLISHER).ceil().max(1.0) as usize;
    let topic = opts.topic("latency");
    let subs = connect_many(opts, "sub", 1, |_| Some(topic.clone()), qos).await?;
    let pubs = connect_many(opts, "pub", publishers, |_| None, qos).await?;
    let spec = PubSpec::new(opts, &topic, qos, Some(rate / publishers as f64));
    let pubs = pubs.into_iter().map(|c| (c, spec.clone())).collect();
    let out = run(opts, pubs, subs, true).await?;
    let shape = Shape {
        qos,
        publishers,
        subscribers: 1,
        copies: 1,
    };
    Ok(out.report("latency", shape, true))
}
