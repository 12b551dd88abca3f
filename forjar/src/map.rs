//! Small ordered maps and sets, kept as one sorted `Vec`.
//!
//! A derivation and its request hold several maps of a few entries each (inputs, env, files,
//! outputs). A `BTreeMap` of one entry allocates a whole leaf of eleven slots, which for a
//! request's inputs is close to a kilobyte; a plan of 10,000 derivations held most of its memory
//! in such leaves. [`SortedMap`] and [`SortedSet`] hold exactly their entries, in key order, and
//! read and write as the `BTreeMap` and `BTreeSet` they replace did: the same iteration order,
//! the same serde form (a map, a sequence), the later of two equal keys kept. Lookups are binary
//! searches; an insert in the middle moves what follows, which is cheap at these sizes.

use std::borrow::Borrow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{MapAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An ordered map held as one `Vec` of entries sorted by key, with no two keys equal.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SortedMap<K, V> {
    entries: Vec<(K, V)>,
}

impl<K, V> SortedMap<K, V> {
    /// An empty map.
    pub const fn new() -> Self {
        SortedMap {
            entries: Vec::new(),
        }
    }

    /// An empty map with room for `capacity` entries.
    pub fn with_capacity(capacity: usize) -> Self {
        SortedMap {
            entries: Vec::with_capacity(capacity),
        }
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries in key order.
    pub fn iter(&self) -> Iter<'_, K, V> {
        Iter(self.entries.iter())
    }

    /// The entries in key order, values mutable.
    pub fn iter_mut(
        &mut self,
    ) -> impl DoubleEndedIterator<Item = (&K, &mut V)> + ExactSizeIterator {
        self.entries.iter_mut().map(|(k, v)| (&*k, v))
    }

    /// The keys in order.
    pub fn keys(&self) -> Keys<'_, K, V> {
        Keys(self.entries.iter())
    }

    /// The values in key order.
    pub fn values(&self) -> Values<'_, K, V> {
        Values(self.entries.iter())
    }

    /// The values in key order, owned.
    pub fn into_values(self) -> impl DoubleEndedIterator<Item = V> + ExactSizeIterator {
        self.entries.into_iter().map(|(_, v)| v)
    }

    /// Removes every entry.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Keeps the entries for which `keep` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        self.entries.retain_mut(|(k, v)| keep(k, v));
    }
}

impl<K: Ord, V> SortedMap<K, V> {
    fn find<Q: Ord + ?Sized>(&self, key: &Q) -> Result<usize, usize>
    where
        K: Borrow<Q>,
    {
        self.entries.binary_search_by(|(k, _)| k.borrow().cmp(key))
    }

    /// The value of `key`.
    pub fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.find(key).ok().map(|i| &self.entries[i].1)
    }

    /// The value of `key`, mutable.
    pub fn get_mut<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        self.find(key).ok().map(|i| &mut self.entries[i].1)
    }

    /// Whether `key` has an entry.
    pub fn contains_key<Q: Ord + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.find(key).is_ok()
    }

    /// Sets `key` to `value`; the value it had, if any.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            Err(i) => {
                self.entries.insert(i, (key, value));
                None
            }
        }
    }

    /// Removes `key`; its value, if it had one.
    pub fn remove<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        self.find(key).ok().map(|i| self.entries.remove(i).1)
    }

    /// A map of `entries` in any order, or, when a key is given twice, that key: the first that
    /// repeats an earlier one, in the order given. `O(n log n)`, where inserting one at a time
    /// in no order would be `O(n²)`.
    pub fn from_unique(mut entries: Vec<(K, V)>) -> Result<Self, K> {
        if let Some(repeat) = sort_unique(&mut entries, |entry| &entry.0) {
            return Err(entries.swap_remove(repeat).0);
        }
        entries.shrink_to_fit();
        Ok(SortedMap { entries })
    }

    /// A map of `entries` in any order; of equal keys the last is kept, as a `BTreeMap`
    /// collected from them keeps it.
    fn from_entries(mut entries: Vec<(K, V)>) -> Self {
        if !entries.is_sorted_by(|a, b| a.0 < b.0) {
            // Stable, so equal keys stay in the order given and the last can be kept.
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            // `dedup_by` drops the later of two equal neighbours; swapped first, the later
            // entry stays in the earlier's place.
            entries.dedup_by(|later, earlier| {
                let equal = later.0 == earlier.0;
                if equal {
                    std::mem::swap(later, earlier);
                }
                equal
            });
        }
        entries.shrink_to_fit();
        SortedMap { entries }
    }
}

/// Up to this many items, [`sort_unique`] compares every pair rather than sort their indices.
const FEW: usize = 8;

/// Sorts `items` by key in place; or, when a key is given twice, leaves them as given and
/// returns the index of the first that repeats an earlier one, in the order given.
fn sort_unique<T, K: Ord>(items: &mut Vec<T>, key: impl Fn(&T) -> &K) -> Option<usize> {
    if items.is_sorted_by(|a, b| key(a) < key(b)) {
        return None;
    }
    if items.len() <= FEW {
        // A derivation's env, inputs and outputs are mostly this few: nothing allocated.
        let repeat = (1..items.len())
            .find(|&later| items[..later].iter().any(|i| key(i) == key(&items[later])));
        if repeat.is_none() {
            items.sort_unstable_by(|a, b| key(a).cmp(key(b)));
        }
        return repeat;
    }
    let order = sorted_order(items, &key);
    if let Some(repeat) = first_repeat(&order, |i| key(&items[i])) {
        return Some(repeat);
    }
    *items = in_order(std::mem::take(items), &order);
    None
}

/// The indices of `items` in the order of their keys; of equal keys, in the order given.
fn sorted_order<T, K: Ord>(items: &[T], key: impl Fn(&T) -> &K) -> Vec<usize> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by(|&a, &b| key(&items[a]).cmp(key(&items[b])));
    order
}

/// Of the keys given more than once, the index of the earliest repeat, given the indices in key
/// order (`sorted_order`): each repeat is next to the item it repeats there.
fn first_repeat<'a, K: Ord + 'a>(order: &[usize], key: impl Fn(usize) -> &'a K) -> Option<usize> {
    order
        .windows(2)
        .filter(|pair| key(pair[0]) == key(pair[1]))
        .map(|pair| pair[1])
        .min()
}

/// `items` rearranged in `order`, a permutation of their indices.
fn in_order<T>(items: Vec<T>, order: &[usize]) -> Vec<T> {
    let mut slots: Vec<Option<T>> = items.into_iter().map(Some).collect();
    order
        .iter()
        .map(|&i| slots[i].take().expect("the order names each index once"))
        .collect()
}

impl<K, V> Default for SortedMap<K, V> {
    fn default() -> Self {
        SortedMap::new()
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for SortedMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: Ord + Borrow<Q>, Q: Ord + ?Sized, V> std::ops::Index<&Q> for SortedMap<K, V> {
    type Output = V;

    /// The value of `key`; panics when it has none, as a `BTreeMap` does.
    fn index(&self, key: &Q) -> &V {
        self.get(key).expect("the key indexed has an entry")
    }
}

impl<K: Ord, V> FromIterator<(K, V)> for SortedMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(entries: I) -> Self {
        SortedMap::from_entries(entries.into_iter().collect())
    }
}

impl<K: Ord, V, const N: usize> From<[(K, V); N]> for SortedMap<K, V> {
    fn from(entries: [(K, V); N]) -> Self {
        SortedMap::from_entries(Vec::from(entries))
    }
}

impl<K: Ord, V> Extend<(K, V)> for SortedMap<K, V> {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, entries: I) {
        let mut all = std::mem::take(&mut self.entries);
        all.extend(entries);
        *self = SortedMap::from_entries(all);
    }
}

impl<K, V> IntoIterator for SortedMap<K, V> {
    type Item = (K, V);
    type IntoIter = std::vec::IntoIter<(K, V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl<'a, K, V> IntoIterator for &'a SortedMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = Iter<'a, K, V>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// The entries of a [`SortedMap`], in key order.
#[derive(Clone, Debug)]
pub struct Iter<'a, K, V>(std::slice::Iter<'a, (K, V)>);

/// The keys of a [`SortedMap`], in order.
#[derive(Clone, Debug)]
pub struct Keys<'a, K, V>(std::slice::Iter<'a, (K, V)>);

/// The values of a [`SortedMap`], in key order.
#[derive(Clone, Debug)]
pub struct Values<'a, K, V>(std::slice::Iter<'a, (K, V)>);

/// The iterator traits of a map's views, each a projection of the slice's entries.
macro_rules! entry_view {
    ($view:ident, $item:ty, |$entry:ident| $project:expr) => {
        impl<'a, K, V> Iterator for $view<'a, K, V> {
            type Item = $item;

            fn next(&mut self) -> Option<$item> {
                self.0.next().map(|$entry| $project)
            }

            fn size_hint(&self) -> (usize, Option<usize>) {
                self.0.size_hint()
            }
        }

        impl<'a, K, V> DoubleEndedIterator for $view<'a, K, V> {
            fn next_back(&mut self) -> Option<$item> {
                self.0.next_back().map(|$entry| $project)
            }
        }

        impl<K, V> ExactSizeIterator for $view<'_, K, V> {}

        impl<K, V> std::iter::FusedIterator for $view<'_, K, V> {}
    };
}

entry_view!(Iter, (&'a K, &'a V), |entry| (&entry.0, &entry.1));
entry_view!(Keys, &'a K, |entry| &entry.0);
entry_view!(Values, &'a V, |entry| &entry.1);

impl<K: Serialize, V: Serialize> Serialize for SortedMap<K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (k, v) in self {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de, K: Ord + Deserialize<'de>, V: Deserialize<'de>> Deserialize<'de> for SortedMap<K, V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor<K, V>(PhantomData<(K, V)>);

        impl<'de, K: Ord + Deserialize<'de>, V: Deserialize<'de>> Visitor<'de> for MapVisitor<K, V> {
            type Value = SortedMap<K, V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                // The hint is the input's word, so it only bounds the first allocation.
                let mut entries = Vec::with_capacity(access.size_hint().unwrap_or(0).min(64));
                while let Some(entry) = access.next_entry()? {
                    entries.push(entry);
                }
                Ok(SortedMap::from_entries(entries))
            }
        }

        deserializer.deserialize_map(MapVisitor(PhantomData))
    }
}

/// An ordered set held as one sorted `Vec` with no two members equal.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SortedSet<T> {
    members: Vec<T>,
}

impl<T> SortedSet<T> {
    /// An empty set.
    pub const fn new() -> Self {
        SortedSet {
            members: Vec::new(),
        }
    }

    /// An empty set with room for `capacity` members.
    pub fn with_capacity(capacity: usize) -> Self {
        SortedSet {
            members: Vec::with_capacity(capacity),
        }
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The members in order.
    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.members.iter()
    }

    /// The least member.
    pub fn first(&self) -> Option<&T> {
        self.members.first()
    }

    /// The greatest member.
    pub fn last(&self) -> Option<&T> {
        self.members.last()
    }

    /// The members in order, as a slice.
    pub fn as_slice(&self) -> &[T] {
        &self.members
    }
}

impl<T: Ord> SortedSet<T> {
    /// Whether `member` is one.
    pub fn contains<Q: Ord + ?Sized>(&self, member: &Q) -> bool
    where
        T: Borrow<Q>,
    {
        self.members
            .binary_search_by(|m| m.borrow().cmp(member))
            .is_ok()
    }

    /// Adds `member`; whether it was not one yet.
    pub fn insert(&mut self, member: T) -> bool {
        match self.members.binary_search(&member) {
            Ok(_) => false,
            Err(i) => {
                self.members.insert(i, member);
                true
            }
        }
    }

    /// Removes `member`; whether it was one.
    pub fn remove<Q: Ord + ?Sized>(&mut self, member: &Q) -> bool
    where
        T: Borrow<Q>,
    {
        match self.members.binary_search_by(|m| m.borrow().cmp(member)) {
            Ok(i) => {
                self.members.remove(i);
                true
            }
            Err(_) => false,
        }
    }

    /// A set of `members` in any order, or, when one is given twice, that one: the first that
    /// repeats an earlier one, in the order given.
    pub fn from_unique(mut members: Vec<T>) -> Result<Self, T> {
        if let Some(repeat) = sort_unique(&mut members, |member| member) {
            return Err(members.swap_remove(repeat));
        }
        members.shrink_to_fit();
        Ok(SortedSet { members })
    }

    fn from_members(mut members: Vec<T>) -> Self {
        if !members.is_sorted_by(|a, b| a < b) {
            members.sort();
            members.dedup();
        }
        members.shrink_to_fit();
        SortedSet { members }
    }
}

impl<T> Default for SortedSet<T> {
    fn default() -> Self {
        SortedSet::new()
    }
}

impl<T: fmt::Debug> fmt::Debug for SortedSet<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl<T: Ord> FromIterator<T> for SortedSet<T> {
    fn from_iter<I: IntoIterator<Item = T>>(members: I) -> Self {
        SortedSet::from_members(members.into_iter().collect())
    }
}

impl<T: Ord, const N: usize> From<[T; N]> for SortedSet<T> {
    fn from(members: [T; N]) -> Self {
        SortedSet::from_members(Vec::from(members))
    }
}

impl<T: Ord> Extend<T> for SortedSet<T> {
    fn extend<I: IntoIterator<Item = T>>(&mut self, members: I) {
        let mut all = std::mem::take(&mut self.members);
        all.extend(members);
        *self = SortedSet::from_members(all);
    }
}

impl<T> IntoIterator for SortedSet<T> {
    type Item = T;
    type IntoIter = std::vec::IntoIter<T>;

    fn into_iter(self) -> Self::IntoIter {
        self.members.into_iter()
    }
}

impl<'a, T> IntoIterator for &'a SortedSet<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<T: Serialize> Serialize for SortedSet<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.len()))?;
        for member in self {
            seq.serialize_element(member)?;
        }
        seq.end()
    }
}

impl<'de, T: Ord + Deserialize<'de>> Deserialize<'de> for SortedSet<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::<T>::deserialize(deserializer).map(SortedSet::from_members)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    #[test]
    fn a_map_iterates_and_serializes_as_the_btreemap_it_replaces() {
        let pairs = [("b", 2), ("a", 1), ("c", 3), ("a", 4)];
        let map: SortedMap<&str, i32> = pairs.into_iter().collect();
        let btree: BTreeMap<&str, i32> = pairs.into_iter().collect();
        assert!(map.iter().eq(btree.iter()));
        assert_eq!(map.len(), 3);
        assert_eq!(map["a"], 4, "of equal keys the last is kept");
        assert_eq!(
            serde_json::to_string(&map).unwrap(),
            serde_json::to_string(&btree).unwrap()
        );
        let back: SortedMap<String, i32> = serde_json::from_str(r#"{"z":1,"y":2,"z":3}"#).unwrap();
        let btree_back: BTreeMap<String, i32> =
            serde_json::from_str(r#"{"z":1,"y":2,"z":3}"#).unwrap();
        assert!(back.iter().eq(btree_back.iter()));
        assert_eq!(format!("{map:?}"), format!("{btree:?}"));
    }

    #[test]
    fn a_map_inserts_and_removes_in_order() {
        let mut map = SortedMap::new();
        for k in [5, 1, 3, 2, 4] {
            assert_eq!(map.insert(k, k * 10), None);
        }
        assert_eq!(map.insert(3, 33), Some(30));
        assert!(map.keys().copied().eq(1..=5));
        assert_eq!(map.remove(&1), Some(10));
        assert_eq!(map.remove(&1), None);
        assert!(!map.contains_key(&1));
        assert_eq!(map.get(&3), Some(&33));
        assert_eq!(map.values().next_back(), Some(&50));
    }

    #[test]
    fn a_map_from_unique_entries_names_the_first_key_given_twice() {
        let map = SortedMap::from_unique(vec![("c", 3), ("a", 1), ("b", 2)]).unwrap();
        assert!(map.iter().eq([(&"a", &1), (&"b", &2), (&"c", &3)]));
        // `b` is repeated before `a` is, though `a` sorts first.
        let repeated = SortedMap::from_unique(vec![("b", 1), ("a", 2), ("b", 3), ("a", 4)]);
        assert_eq!(repeated.unwrap_err(), "b");
        assert_eq!(
            SortedSet::from_unique(vec![3, 1, 2, 1, 3]).unwrap_err(),
            1,
            "the second 1 comes before the second 3"
        );
        assert!(
            SortedSet::from_unique(vec![3, 1, 2])
                .unwrap()
                .iter()
                .eq(&[1, 2, 3])
        );
        // More than a few, as one path; a few, as another.
        let mut long: Vec<u32> = (0..20).rev().collect();
        long.extend([7, 3]);
        assert_eq!(
            SortedSet::from_unique(long).unwrap_err(),
            7,
            "7 is repeated first"
        );
        let entries = |keys: &[u32]| keys.iter().map(|&k| (k, ())).collect::<Vec<_>>();
        let long: Vec<u32> = (0..20).rev().chain([3, 7]).collect();
        assert_eq!(SortedMap::from_unique(entries(&long)).unwrap_err(), 3);
        assert_eq!(SortedMap::from_unique(entries(&[5, 4, 5])).unwrap_err(), 5);
        // Many entries in no order.
        let many: Vec<(u32, u32)> = (0..100_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761), i))
            .collect();
        let map = SortedMap::from_unique(many).unwrap();
        assert_eq!(map.len(), 100_000);
        assert!(map.keys().is_sorted());
    }

    #[test]
    fn a_set_iterates_and_serializes_as_the_btreeset_it_replaces() {
        let members = ["b", "a", "c", "a"];
        let set: SortedSet<&str> = members.into_iter().collect();
        let btree: BTreeSet<&str> = members.into_iter().collect();
        assert!(set.iter().eq(btree.iter()));
        assert_eq!(
            serde_json::to_string(&set).unwrap(),
            serde_json::to_string(&btree).unwrap()
        );
        let mut set = set;
        assert!(!set.insert("b"));
        assert!(set.insert("0"));
        assert!(set.remove("a"));
        assert!(set.iter().copied().eq(["0", "b", "c"]));
        assert_eq!(format!("{set:?}"), r#"{"0", "b", "c"}"#);
    }
}
