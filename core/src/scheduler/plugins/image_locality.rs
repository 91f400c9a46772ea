//! ImageLocality: prefers nodes that already have the pod's images, by their total size
//! (between 23 MiB and 1000 MiB per container, scaled to 0-100).

use crate::scheduler::framework::{CycleState, Plugin, ScorePlugin, MAX_NODE_SCORE};
use crate::scheduler::{NodeInfo, PodInfo};

/// Its name.
pub const NAME: &str = "ImageLocality";

const MIN_THRESHOLD: i64 = 23 * 1024 * 1024;
const MAX_CONTAINER_THRESHOLD: i64 = 1000 * 1024 * 1024;

/// The ImageLocality plugin.
pub struct ImageLocality;

impl Plugin for ImageLocality {
    fn name(&self) -> &str {
        NAME
    }
    fn node_local(&self) -> bool {
        true
    }
    fn as_score(&self) -> Option<&dyn ScorePlugin> {
        Some(self)
    }
}

impl ScorePlugin for ImageLocality {
    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let Some(spec) = pod.pod.spec.as_ref() else {
            return 0;
        };
        if node.images.is_empty() {
            return 0;
        }
        let sum: i64 = spec
            .containers
            .iter()
            .filter_map(|c| c.image.as_ref())
            .filter_map(|image| {
                node.images.get(image).or_else(|| {
                    // `name` and `name:latest` are the same image.
                    if image.contains(':') {
                        None
                    } else {
                        node.images.get(&format!("{image}:latest"))
                    }
                })
            })
            .sum();
        let max = MAX_CONTAINER_THRESHOLD * spec.containers.len().max(1) as i64;
        let clamped = sum.clamp(MIN_THRESHOLD, max);
        MAX_NODE_SCORE * (clamped - MIN_THRESHOLD) / (max - MIN_THRESHOLD)
    }
}
