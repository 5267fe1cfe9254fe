//! A byte trie over the rules' literal prefixes: walking an action down the
//! trie visits exactly the rules whose pattern could match it, so a check
//! with 10,000 rules tests a handful of globs instead of all of them.

/// The rules of one scope (one tenant, workspace or agent), by literal prefix.
#[derive(Debug, Default)]
pub(crate) struct PrefixIndex {
    nodes: Vec<Node>,
}

#[derive(Debug, Default)]
struct Node {
    /// Sorted by byte, so lookups are a binary search.
    children: Vec<(u8, u32)>,
    /// Rules whose literal prefix ends here.
    rules: Vec<usize>,
}

impl PrefixIndex {
    pub fn insert(&mut self, prefix: &[u8], rule: usize) {
        if self.nodes.is_empty() {
            self.nodes.push(Node::default());
        }
        let mut at = 0usize;
        for &b in prefix {
            let next = match self.nodes[at].children.binary_search_by_key(&b, |c| c.0) {
                Ok(i) => self.nodes[at].children[i].1 as usize,
                Err(i) => {
                    let new = self.nodes.len();
                    self.nodes.push(Node::default());
                    // Rule counts are far below u32::MAX nodes.
                    self.nodes[at].children.insert(i, (b, new as u32));
                    new
                }
            };
            at = next;
        }
        self.nodes[at].rules.push(rule);
    }

    /// Calls `f` with every rule whose literal prefix is a prefix of `text`.
    pub fn for_each_candidate(&self, text: &[u8], mut f: impl FnMut(usize)) {
        let Some(mut node) = self.nodes.first() else {
            return;
        };
        node.rules.iter().for_each(|r| f(*r));
        for b in text {
            match node.children.binary_search_by_key(b, |c| c.0) {
                Ok(i) => {
                    let Some(next) = self.nodes.get(node.children[i].1 as usize) else {
                        return;
                    };
                    node = next;
                    node.rules.iter().for_each(|r| f(*r));
                }
                Err(_) => return,
            }
        }
    }
}
