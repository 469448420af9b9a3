//! Fan-in: `publishers` clients publish at full speed to one topic with one subscriber;
//! measures deliveries per second and the share of messages dropped.

use tern_codec::QoS;

use crate::error::Result;
use crate::run::{connect_many, run, Options, PubSpec, Shape};
use crate::stats::Report;

pub async fn fan_in(opts: &Options, publishers: usize, qos: QoS) -> Result<Report> {
    let topic = opts.topic("fan-in");
    let subs = connect_many(opts, "sub", 1, |_| Some(topic.clone()), qos).await?;
    let pubs = connect_many(opts, "pub", publishers, |_| None, qos).await?;
    let spec = PubSpec::new(opts, &topic, qos, None);
    let pubs = pubs.into_iter().map(|c| (c, spec.clone())).collect();
    let out = run(opts, pubs, subs, true).await?;
    let shape = Shape {
        qos,
        publishers,
        subscribers: 1,
        copies: 1,
    };
    Ok(out.report("fan-in", shape, true))
}
