//! Fan-out: one publisher at full speed (within its QoS 1 window), `subscribers` clients on
//! the same topic; measures deliveries per second (each subscriber's copy counts).

use tern_codec::QoS;

use crate::error::Result;
use crate::run::{connect_many, run, Options, PubSpec, Shape};
use crate::stats::Report;

pub async fn fan_out(opts: &Options, subscribers: usize, qos: QoS) -> Result<Report> {
    let topic = opts.topic("fan-out");
    let subs = connect_many(opts, "sub", subscribers, |_| Some(topic.clone()), qos).await?;
    let pubs = connect_many(opts, "pub", 1, |_| None, qos).await?;
    let spec = PubSpec::new(opts, &topic, qos, None);
    let pubs = pubs.into_iter().map(|c| (c, spec.clone())).collect();
    let out = run(opts, pubs, subs, false).await?;
    let shape = Shape {
        qos,
        publishers: 1,
        subscribers,
        copies: subscribers as u64,
    };
    Ok(out.report("fan-out", shape, false))
}
