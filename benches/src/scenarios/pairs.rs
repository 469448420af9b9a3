//! Pairs: `pairs` publisher/subscriber pairs, each on its own topic, publishers at full
//! speed within their QoS 1 window; measures deliveries per second and latency.

use tern_codec::QoS;

use crate::error::Result;
use crate::run::{connect_many, run, Options, PubSpec, Shape};
use crate::stats::Report;

pub async fn pairs(opts: &Options, pairs: usize, qos: QoS) -> Result<Report> {
    let topic = |i: usize| opts.topic(&format!("pair/{i}"));
    let subs = connect_many(opts, "sub", pairs, |i| Some(topic(i)), qos).await?;
    let pubs = connect_many(opts, "pub", pairs, |_| None, qos).await?;
    let pubs = pubs
        .into_iter()
        .enumerate()
        .map(|(i, c)| (c, PubSpec::new(opts, &topic(i), qos, None)))
        .collect();
    let out = run(opts, pubs, subs, true).await?;
    let shape = Shape {
        qos,
        publishers: pairs,
        subscribers: pairs,
        copies: 1,
    };
    Ok(out.report("pairs", shape, true))
}
