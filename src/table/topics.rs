//! The topic table of one shard: which nodes have interest in each topic
//! (large groups, where nodes fan out locally to their members).
//!
//! Topics are sharded by the same slot function as users. A node subscribes
//! a topic once for all its local members (it keeps the refcount), so a
//! topic holds at most one entry per node, and each entry remembers the
//! node's epoch: a Publish skips entries of a node whose sessions died, and
//! a node's departure removes its entries through the node's own list, in
//! time proportional to that node's subscriptions.

use std::collections::HashMap;

use super::NodeId;

/// Why a subscription was not recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeError {
    /// The table holds its maximum number of topics.
    Full,
}

pub struct Topics {
    by_topic: HashMap<Box<[u8]>, Vec<(NodeId, u32)>, ahash::RandomState>,
    /// The topics each node subscribed here, for purging.
    by_node: HashMap<NodeId, Vec<Box<[u8]>>, ahash::RandomState>,
    topics_max: usize,
}

impl Topics {
    pub fn new(topics_max: usize) -> Self {
        Topics {
            by_topic: HashMap::default(),
            by_node: HashMap::default(),
            topics_max,
        }
    }

    pub fn topic_count(&self) -> usize {
        self.by_topic.len()
    }

    /// Records `node`'s interest in `topic` (at `epoch`). Subscribing twice
    /// is one subscription.
    pub fn subscribe(
        &mut self,
        topic: &[u8],
        node: NodeId,
        epoch: u32,
    ) -> Result<(), SubscribeError> {
        if let Some(nodes) = self.by_topic.get_mut(topic) {
            match nodes.iter_mut().find(|(n, _)| *n == node) {
                Some(entry) => entry.1 = epoch,
                None => {
                    nodes.push((node, epoch));
                    self.by_node.entry(node).or_default().push(topic.into());
                }
            }
            return Ok(());
        }
        if self.by_topic.len() >= self.topics_max {
            return Err(SubscribeError::Full);
        }
        self.by_topic.insert(topic.into(), vec![(node, epoch)]);
        self.by_node.entry(node).or_default().push(topic.into());
        Ok(())
    }

    /// Removes `node`'s interest in `topic`; returns whether it had one.
    pub fn unsubscribe(&mut self, topic: &[u8], node: NodeId) -> bool {
        let Some(nodes) = self.by_topic.get_mut(topic) else {
            return false;
        };
        let Some(position) = nodes.iter().position(|(n, _)| *n == node) else {
            return false;
        };
        nodes.swap_remove(position);
        if nodes.is_empty() {
            self.by_topic.remove(topic);
        }
        if let Some(topics) = self.by_node.get_mut(&node) {
            if let Some(i) = topics.iter().position(|t| &**t == topic) {
                topics.swap_remove(i);
            }
        }
        true
    }

    /// The nodes with interest in `topic`, with the epoch they subscribed at.
    pub fn subscribers(&self, topic: &[u8]) -> &[(NodeId, u32)] {
        self.by_topic.get(topic).map_or(&[], Vec::as_slice)
    }

    /// Gives memory back after a burst: the maps shrink to what they hold.
    pub fn shrink(&mut self) {
        self.by_node.retain(|_, topics| !topics.is_empty());
        for topics in self.by_node.values_mut() {
            topics.shrink_to_fit();
        }
        self.by_topic.shrink_to_fit();
        self.by_node.shrink_to_fit();
    }

    /// Whether the maps are mostly empty (and not tiny): worth a `shrink`.
    pub fn wants_shrink(&self) -> bool {
        let capacity = self.by_topic.capacity();
        capacity > 1024 && self.by_topic.len() * 4 < capacity
    }

    /// Removes the topics `remove` selects with every subscription to them
    /// (topics of slots this shard no longer owns); returns how many.
    pub fn remove_topics(&mut self, mut remove: impl FnMut(&[u8]) -> bool) -> usize {
        let before = self.by_topic.len();
        self.by_topic.retain(|topic, _| !remove(topic));
        let by_topic = &self.by_topic;
        for topics in self.by_node.values_mut() {
            topics.retain(|topic| by_topic.contains_key(topic));
        }
        before - self.by_topic.len()
    }

    /// Removes every subscription of `node`; returns how many.
    pub fn purge_node(&mut self, node: NodeId) -> usize {
        let Some(topics) = self.by_node.remove(&node) else {
            return 0;
        };
        for topic in &topics {
            if let Some(nodes) = self.by_topic.get_mut(topic) {
                nodes.retain(|(n, _)| *n != node);
                if nodes.is_empty() {
                    self.by_topic.remove(topic);
                }
            }
        }
        topics.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_publish_unsubscribe_purge() {
        let mut topics = Topics::new(2);
        topics.subscribe(b"g1", NodeId(1), 1).unwrap();
        topics.subscribe(b"g1", NodeId(1), 1).unwrap();
        topics.subscribe(b"g1", NodeId(2), 3).unwrap();
        topics.subscribe(b"g2", NodeId(1), 1).unwrap();
        assert_eq!(topics.subscribers(b"g1"), [(NodeId(1), 1), (NodeId(2), 3)]);
        assert_eq!(
            topics.subscribe(b"g3", NodeId(1), 1),
            Err(SubscribeError::Full)
        );
        assert!(topics.unsubscribe(b"g1", NodeId(2)));
        assert!(!topics.unsubscribe(b"g1", NodeId(2)));
        assert_eq!(topics.purge_node(NodeId(1)), 2);
        assert_eq!(topics.topic_count(), 0);
        assert!(topics.subscribers(b"g1").is_empty());
        // Room again.
        topics.subscribe(b"g3", NodeId(1), 2).unwrap();
    }
}
