"""Retrieval automaton: depth-capped suffix tries with exact failure links, in one node pool.

Each *owner* (a request, or the global cache) is the Aho-Corasick automaton of every
n-gram (n <= ``max_depth``) of the token stream fed to it. It is built online, the way a
suffix trie is: feeding token x at position t walks the failure chain of the active
state (the longest context suffix that can still grow) and adds x below every state on
it. So after each token:

* every suffix of the stream of length <= max_depth is a node, and ``freq`` of a node is
  the number of times its string occurred (counted at its end positions);
* ``fail[v]`` is exactly v's string minus its first token (suffix closure makes it exact,
  not the lazy approximation of a rebuilt Aho-Corasick automaton);
* the failure chain of the active state enumerates all context suffixes, and the children
  of each are the tokens that followed earlier occurrences: the retrieval borders.

Bounded memory: each owner has a node cap. When feeding would pass it, the oldest quarter
of the owner's nodes is evicted in one pass. A node's key is the start position of its
latest occurrence; keys never grow from parent to child and always grow from a node to
its failure target, so removing every node with key <= T leaves a valid automaton (parents
and failure targets of survivors survive) and only removes leaves-first subtrees. T stays
below the current context's suffixes, so the active state survives.

All owners share one pool of node arrays and one open-addressing child table keyed by
(parent, token); the pool grows by doubling when its free list runs short and holds at
most the sum of the live owners' caps. Kernels are numba-compiled and work on the flat
arrays; ``NgramPool`` is the thin Python owner of those arrays.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np
from numba import njit

from .errors import ConfigError

__all__ = [
    "NgramPool",
    "AutomatonView",
    "child_of",
    "match_state",
    "feed_tokens",
    "feed_batch",
    "active_tail",
    "ROOT_KEY",
    "TOKEN",
    "PARENT",
    "FAIL",
    "DEPTH",
    "FREQ",
    "KEY",
    "FIRST_CHILD",
    "NEXT_SIBLING",
    "O_ROOT",
    "O_ACTIVE",
    "O_COUNT",
    "O_CAP",
    "O_CLOCK",
    "O_LAST",
    "O_USED",
]

# node fields: columns of the [capacity, N_FIELDS] int32 node table (node-major: one node = 32 B,
# one cache line, so a lookup touches one line per node)
TOKEN, PARENT, FAIL, DEPTH, FREQ, KEY, FIRST_CHILD, NEXT_SIBLING = range(8)
N_FIELDS = 8
NODE_BYTES = N_FIELDS * 4 + 2 * 4  # fields + two child-table slots (load factor <= 1/2)

# owner fields: columns of the [owners, N_OWNER_FIELDS] int64 owner table
O_ROOT, O_ACTIVE, O_COUNT, O_CAP, O_CLOCK, O_LAST, O_USED = range(7)
N_OWNER_FIELDS = 7

# pool state: [free ids on the stack]
S_FREE = 0

#: What drafting kernels read of a pool (:meth:`NgramPool.view`): the ``nodes`` table
#: [capacity, N_FIELDS], the child ``table`` and the ``owners`` table.
AutomatonView = namedtuple("AutomatonView", ["nodes", "table", "owners"])

ROOT_KEY = np.iinfo(np.int32).max
_KEY_RENORM = 1 << 30  # keys are int32 positions; shift them down past this


# --------------------------------------------------------------------------- child table
@njit(cache=True, inline="always")
def _home(parent, token, mask):
    h = np.uint64(parent) * np.uint64(0x9E3779B97F4A7C15)
    h ^= np.uint64(token) * np.uint64(0xC2B2AE3D27D4EB4F)
    h ^= h >> np.uint64(31)
    return np.int64(h & np.uint64(mask))


@njit(cache=True)
def child_of(nodes, table, parent, token):
    """The child of ``parent`` carrying ``token``, or -1."""
    mask = table.shape[0] - 1
    i = _home(parent, token, mask)
    while True:
        c = table[i]
        if c < 0:
            return -1
        if nodes[c, PARENT] == parent and nodes[c, TOKEN] == token:
            return c
        i = (i + 1) & mask


@njit(cache=True)
def _table_insert(nodes, table, c):
    mask = table.shape[0] - 1
    i = _home(nodes[c, PARENT], nodes[c, TOKEN], mask)
    while table[i] >= 0:
        i = (i + 1) & mask
    table[i] = c


@njit(cache=True)
def _table_delete(nodes, table, c):
    """Linear-probing delete with backward shift (no tombstones, probes stay short)."""
    mask = table.shape[0] - 1
    i = _home(nodes[c, PARENT], nodes[c, TOKEN], mask)
    while table[i] != c:
        i = (i + 1) & mask
    j = i
    while True:
        j = (j + 1) & mask
        e = table[j]
        if e < 0:
            break
        k = _home(nodes[e, PARENT], nodes[e, TOKEN], mask)
        # e may move back to i only if its home does not lie cyclically in (i, j]
        if i <= j:
            stays = i < k <= j
        else:
            stays = k > i or k <= j
        if not stays:
            table[i] = e
            i = j
    table[i] = -1


@njit(cache=True, nogil=True)
def _rehash(nodes, old_table, new_table):
    for i in range(old_table.shape[0]):
        c = old_table[i]
        if c >= 0:
            _table_insert(nodes, new_table, c)


# --------------------------------------------------------------------------- nodes
@njit(cache=True)
def _alloc(nodes, table, free, state, parent, token):
    top = state[S_FREE]
    if top == 0:
        return -1
    top -= 1
    state[S_FREE] = top
    c = free[top]
    nodes[c, TOKEN] = token
    nodes[c, PARENT] = parent
    nodes[c, FAIL] = -1
    nodes[c, FREQ] = 0
    nodes[c, FIRST_CHILD] = -1
    if parent >= 0:
        nodes[c, DEPTH] = nodes[parent, DEPTH] + 1
        nodes[c, NEXT_SIBLING] = nodes[parent, FIRST_CHILD]
        nodes[parent, FIRST_CHILD] = c
        _table_insert(nodes, table, c)
    else:
        nodes[c, DEPTH] = 0
        nodes[c, NEXT_SIBLING] = -1
    return c


@njit(cache=True)
def _free_subtree(nodes, table, free, state, top_node, stack):
    """Free ``top_node`` and its descendants (the caller unlinks it from its parent)."""
    sp = 0
    stack[sp] = top_node
    sp += 1
    freed = 0
    while sp > 0:
        sp -= 1
        v = stack[sp]
        c = nodes[v, FIRST_CHILD]
        while c >= 0:
            stack[sp] = c
            sp += 1
            c = nodes[c, NEXT_SIBLING]
        if nodes[v, PARENT] >= 0:
            _table_delete(nodes, table, v)
        free[state[S_FREE]] = v
        state[S_FREE] += 1
        freed += 1
    return freed


@njit(cache=True)
def _nodes_below(nodes, top, stack, out):
    """Write the nodes strictly below ``top`` into ``out`` (depth-first); returns how many."""
    m = 0
    sp = 0
    stack[sp] = top
    sp += 1
    while sp > 0:
        sp -= 1
        v = stack[sp]
        if v != top:
            out[m] = v
            m += 1
        c = nodes[v, FIRST_CHILD]
        while c >= 0:
            stack[sp] = c
            sp += 1
            c = nodes[c, NEXT_SIBLING]
    return m


@njit(cache=True)
def _evict(nodes, table, free, state, owners, slot, max_depth):
    """Drop the owner's oldest nodes (key <= T) until about 3/4 of its cap is used."""
    root = owners[slot, O_ROOT]
    count = owners[slot, O_COUNT]
    cap = owners[slot, O_CAP]
    n_remove = count - (cap * 3) // 4
    if n_remove <= 0:
        return
    stack = np.empty(count + 1, np.int32)
    below = np.empty(count + 1, np.int32)
    m = _nodes_below(nodes, root, stack, below)
    if m == 0:
        return
    keys = np.empty(m, np.int32)
    for j in range(m):
        keys[j] = nodes[below[j], KEY]
    kth = min(n_remove, m) - 1
    threshold = np.partition(keys, kth)[kth]
    # never touch the suffixes of the current context (keys >= clock - max_depth + 1)
    clock = owners[slot, O_CLOCK]
    limit = clock - max_depth
    if threshold > limit:
        threshold = limit
    # remove every child with key <= threshold below surviving nodes
    removed = 0
    sp = 0
    stack[sp] = root
    sp += 1
    sub = np.empty(count + 1, np.int32)
    while sp > 0:
        sp -= 1
        v = stack[sp]
        prev = -1
        c = nodes[v, FIRST_CHILD]
        while c >= 0:
            nxt = nodes[c, NEXT_SIBLING]
            if nodes[c, KEY] <= threshold:
                if prev < 0:
                    nodes[v, FIRST_CHILD] = nxt
                else:
                    nodes[prev, NEXT_SIBLING] = nxt
                removed += _free_subtree(nodes, table, free, state, c, sub)
            else:
                stack[sp] = c
                sp += 1
                prev = c
            c = nxt
    owners[slot, O_COUNT] = count - removed
    # keep int32 keys far from overflow: shift this owner's positions down
    if clock > _KEY_RENORM:
        shift = clock - (_KEY_RENORM >> 1)
        owners[slot, O_CLOCK] = clock - shift
        for j in range(_nodes_below(nodes, root, stack, below)):
            v = below[j]
            k = np.int64(nodes[v, KEY]) - shift
            nodes[v, KEY] = k if k > 0 else 0


@njit(cache=True)
def feed_tokens(nodes, table, free, state, owners, slot, tokens, start, max_depth):
    """Feed tokens[start:] to the owner; returns how many were fed (< len: pool needs to grow)."""
    root = owners[slot, O_ROOT]
    n = tokens.shape[0]
    for t in range(start, n):
        x = tokens[t]
        if owners[slot, O_COUNT] + max_depth > owners[slot, O_CAP]:
            _evict(nodes, table, free, state, owners, slot, max_depth)
        if state[S_FREE] < max_depth:
            return t
        clock = owners[slot, O_CLOCK]
        v = owners[slot, O_ACTIVE]
        prev = -1
        first = -1
        second = -1
        while True:
            # a childless state (often one created a step ago) needs no table probe
            c = child_of(nodes, table, v, x) if nodes[v, FIRST_CHILD] >= 0 else -1
            if c < 0:
                c = _alloc(nodes, table, free, state, v, x)
                owners[slot, O_COUNT] += 1
            nodes[c, FREQ] += 1
            nodes[c, KEY] = clock - nodes[c, DEPTH] + 1
            if prev >= 0:
                nodes[prev, FAIL] = c  # prev's string minus its first token
            if first < 0:
                first = c
            elif second < 0:
                second = c
            prev = c
            if v == root:
                break
            v = nodes[v, FAIL]
        nodes[prev, FAIL] = root
        if nodes[first, DEPTH] < max_depth:
            owners[slot, O_ACTIVE] = first
        elif second >= 0:
            owners[slot, O_ACTIVE] = second
        else:
            owners[slot, O_ACTIVE] = root
        owners[slot, O_CLOCK] = clock + 1
        owners[slot, O_LAST] = x
    return n


@njit(cache=True, nogil=True)
def feed_batch(nodes, table, free, state, owners, slots, tokens, offsets, req0, tok0, max_depth):
    """Feed tokens[offsets[b]:offsets[b+1]] to owner slots[b] for b >= req0 (request req0 from
    its tok0-th token). Returns (-1, 0) when done, else (b, fed) where the pool ran short."""
    for b in range(req0, slots.shape[0]):
        seg = tokens[offsets[b] : offsets[b + 1]]
        start = tok0 if b == req0 else 0
        fed = feed_tokens(nodes, table, free, state, owners, slots[b], seg, start, max_depth)
        if fed < seg.shape[0]:
            return b, fed
    return -1, 0


@njit(cache=True, inline="always")
def advance(nodes, table, root, v, x):
    """One Aho-Corasick transition: from state v on token x, following failure links until a
    child matches (or the root has none): the deepest state whose string ends the text + x."""
    while True:
        c = child_of(nodes, table, v, x)
        if c >= 0:
            return c
        if v == root:
            return v
        v = nodes[v, FAIL]


@njit(cache=True)
def match_state(nodes, table, root, tokens, start, end):
    """Aho-Corasick walk from ``root`` over tokens[start:end]: the deepest state whose string
    is a suffix of those tokens (used to enter the global cache from a request's tail)."""
    v = root
    for t in range(start, end):
        v = advance(nodes, table, root, v, tokens[t])
    return v


@njit(cache=True)
def active_tail(nodes, owners, slot, out):
    """Write the tokens of the owner's active state (the context tail) into out; returns length."""
    v = owners[slot, O_ACTIVE]
    root = owners[slot, O_ROOT]
    d = nodes[v, DEPTH]
    i = d
    while v != root:
        i -= 1
        out[i] = nodes[v, TOKEN]
        v = nodes[v, PARENT]
    return d


@njit(cache=True)
def _free_owner(nodes, table, free, state, owners, slot):
    root = owners[slot, O_ROOT]
    stack = np.empty(owners[slot, O_COUNT] + 1, np.int32)
    _free_subtree(nodes, table, free, state, root, stack)
    owners[slot, O_COUNT] = 0
    owners[slot, O_USED] = 0


@njit(cache=True)
def _reset_owner_text(owners, slot):
    """Start a new document: the next token is not a continuation of the previous ones."""
    owners[slot, O_ACTIVE] = owners[slot, O_ROOT]


# --------------------------------------------------------------------------- pool
def _pow2_at_least(x: int) -> int:
    return 1 << max(4, int(x - 1).bit_length())


class NgramPool:
    """Owns the node arrays, child table, free list and owner table; grows on demand."""

    def __init__(self, max_depth: int, initial_nodes: int = 4096):
        if not isinstance(max_depth, (int, np.integer)) or not 1 <= max_depth <= 64:
            raise ConfigError(f"automaton depth (n-gram length) must be an integer in [1, 64], got {max_depth!r}")
        self.max_depth = int(max_depth)
        cap = max(int(initial_nodes), 4 * self.max_depth)
        self.nodes = np.zeros((cap, N_FIELDS), np.int32)
        self.table = np.full(_pow2_at_least(2 * cap), -1, np.int32)
        self.free = np.arange(cap - 1, -1, -1, dtype=np.int32)  # stack: low ids popped first
        self.state = np.array([cap], np.int64)
        self.owners = np.zeros((4, N_OWNER_FIELDS), np.int64)
        self._free_slots: list[int] = list(range(3, -1, -1))

    def view(self) -> AutomatonView:
        """The arrays kernels read, as one group (take it anew after feeding: growth
        replaces the arrays)."""
        return AutomatonView(self.nodes, self.table, self.owners)

    # ------------------------------------------------------------------ capacity
    @property
    def capacity(self) -> int:
        return int(self.nodes.shape[0])

    @property
    def free_nodes(self) -> int:
        return int(self.state[S_FREE])

    @property
    def live_nodes(self) -> int:
        return self.capacity - self.free_nodes

    def nbytes(self) -> int:
        """Bytes held by the pool (node table, child table, free list, owner table)."""
        return int(self.nodes.nbytes + self.table.nbytes + self.free.nbytes + self.owners.nbytes)

    def reserve(self, n_free: int) -> None:
        """Grow (doubling) until at least ``n_free`` nodes are free."""
        if self.free_nodes >= n_free:
            return
        old = self.capacity
        new = old
        while new - self.live_nodes < n_free:
            new *= 2
        nodes = np.zeros((new, N_FIELDS), np.int32)
        nodes[:old] = self.nodes
        free = np.empty(new, np.int32)
        top = self.free_nodes
        free[:top] = self.free[:top]
        added = np.arange(new - 1, old - 1, -1, dtype=np.int32)
        free[top : top + added.shape[0]] = added
        table = np.full(_pow2_at_least(2 * new), -1, np.int32)
        _rehash(nodes, self.table, table)
        self.nodes, self.free, self.table = nodes, free, table
        self.state[S_FREE] = top + added.shape[0]

    # ------------------------------------------------------------------ owners
    def new_owner(self, cap: int) -> int:
        if not self._free_slots:
            old = self.owners.shape[0]
            owners = np.zeros((2 * old, N_OWNER_FIELDS), np.int64)
            owners[:old] = self.owners
            self.owners = owners
            self._free_slots = list(range(2 * old - 1, old - 1, -1))
        slot = self._free_slots.pop()
        self.reserve(1)
        root = int(self.free[self.free_nodes - 1])
        self.state[S_FREE] -= 1
        n = self.nodes
        n[root, TOKEN], n[root, PARENT], n[root, FAIL] = -1, -1, root
        n[root, DEPTH], n[root, FREQ], n[root, KEY] = 0, 0, ROOT_KEY
        n[root, FIRST_CHILD], n[root, NEXT_SIBLING] = -1, -1
        o = self.owners[slot]
        o[O_ROOT], o[O_ACTIVE], o[O_COUNT], o[O_CAP] = root, root, 1, int(cap)
        o[O_CLOCK], o[O_LAST], o[O_USED] = 0, -1, 1
        return slot

    def free_owner(self, slot: int) -> None:
        if not self.owners[slot, O_USED]:
            return
        _free_owner(self.nodes, self.table, self.free, self.state, self.owners, slot)
        self._free_slots.append(slot)

    def owner_nodes(self, slot: int) -> int:
        return int(self.owners[slot, O_COUNT])

    def active_owners(self) -> int:
        return int(self.owners[:, O_USED].sum())

    def new_document(self, slot: int) -> None:
        _reset_owner_text(self.owners, slot)

    def feed(self, slot: int, tokens) -> None:
        """Feed tokens to one owner (grows the pool as needed)."""
        toks = np.ascontiguousarray(tokens, dtype=np.int32)
        done = 0
        while done < toks.shape[0]:
            self.reserve(self.max_depth + 1)  # the kernel stops when the free list runs low
            done = feed_tokens(
                self.nodes, self.table, self.free, self.state, self.owners, slot, toks, done, self.max_depth
            )

    def feed_many(self, slots, tokens, offsets) -> None:
        """Batched feed: tokens[offsets[b]:offsets[b+1]] go to owner slots[b]."""
        req, tok = 0, 0
        while True:
            self.reserve(self.max_depth + 1)
            req, tok = feed_batch(
                self.nodes,
                self.table,
                self.free,
                self.state,
                self.owners,
                slots,
                tokens,
                offsets,
                req,
                tok,
                self.max_depth,
            )
            if req < 0:
                return

    # ------------------------------------------------------------------ inspection (tests, debugging)
    def root(self, slot: int) -> int:
        return int(self.owners[slot, O_ROOT])

    def active(self, slot: int) -> int:
        return int(self.owners[slot, O_ACTIVE])

    def child(self, node: int, token: int) -> int:
        return int(child_of(self.nodes, self.table, node, token))

    def lookup(self, slot: int, seq) -> int:
        """Node of the token string ``seq`` in the owner's trie, or -1."""
        v = self.root(slot)
        for tok in seq:
            v = self.child(v, int(tok))
            if v < 0:
                return -1
        return v

    def string(self, node: int) -> tuple[int, ...]:
        out = []
        while self.nodes[node, PARENT] >= 0:
            out.append(int(self.nodes[node, TOKEN]))
            node = int(self.nodes[node, PARENT])
        return tuple(reversed(out))

    def children(self, node: int) -> dict[int, int]:
        out = {}
        c = int(self.nodes[node, FIRST_CHILD])
        while c >= 0:
            out[int(self.nodes[c, TOKEN])] = c
            c = int(self.nodes[c, NEXT_SIBLING])
        return out

    def all_strings(self, slot: int) -> dict[tuple[int, ...], int]:
        """{string: node} of every non-root node of the owner."""
        out, stack = {}, [self.root(slot)]
        while stack:
            v = stack.pop()
            for _, c in self.children(v).items():
                out[self.string(c)] = c
                stack.append(c)
        return out
