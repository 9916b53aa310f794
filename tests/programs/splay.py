"""Splay: the V8 splay-tree benchmark, one batch of modifications per tick.

Scaled-down port of the Octane/V8 "splay" benchmark: a top-down splay tree
of TREE_SIZE nodes with random float keys (random.Random(seed) held in a
global) whose values are small payload trees of nested dicts, lists and
strings.  Each tick inserts MODIFICATIONS new nodes and removes as many
(the greatest key below each new one), keeping the size constant; every few
ticks the tree is verified (iterative in-order walk) and its height, root
and a key checksum are printed.
Migration features: a large linked binary tree of Node objects (a few
hundred nodes, depth up to a few dozen), thousands of small dicts/lists/
strings in payloads, a random.Random state, float keys printed with repr.
"""

import random

TREE_SIZE = 400
MODIFICATIONS = 25
PAYLOAD_DEPTH = 3
TICKS = 40
rng = random.Random(1234)


class Node:
    __slots__ = ("key", "value", "left", "right")

    def __init__(self, key, value):
        self.key = key
        self.value = value
        self.left = None
        self.right = None


class SplayTree:
    def __init__(self):
        self.root = None
        self.size = 0

    def is_empty(self):
        return self.root is None

    def insert(self, key, value):
        if self.is_empty():
            self.root = Node(key, value)
            self.size = 1
            return
        self.splay(key)
        if self.root.key == key:
            return
        node = Node(key, value)
        if key > self.root.key:
            node.left = self.root
            node.right = self.root.right
            self.root.right = None
        else:
            node.right = self.root
            node.left = self.root.left
            self.root.left = None
        self.root = node
        self.size += 1

    def remove(self, key):
        if self.is_empty():
            raise KeyError(key)
        self.splay(key)
        if self.root.key != key:
            raise KeyError(key)
        removed = self.root
        if self.root.left is None:
            self.root = self.root.right
        else:
            right = self.root.right
            self.root = self.root.left
            self.splay(key)
            self.root.right = right
        self.size -= 1
        return removed

    def find(self, key):
        if self.is_empty():
            return None
        self.splay(key)
        return self.root if self.root.key == key else None

    def find_max(self, start=None):
        if self.is_empty():
            return None
        current = start or self.root
        while current.right is not None:
            current = current.right
        return current

    def find_greatest_less_than(self, key):
        if self.is_empty():
            return None
        self.splay(key)
        if self.root.key < key:
            return self.root
        if self.root.left is not None:
            return self.find_max(self.root.left)
        return None

    def splay(self, key):
        if self.is_empty():
            return
        dummy = Node(None, None)
        left = right = dummy
        current = self.root
        while True:
            if key < current.key:
                if current.left is None:
                    break
                if key < current.left.key:
                    tmp = current.left            # rotate right
                    current.left = tmp.right
                    tmp.right = current
                    current = tmp
                    if current.left is None:
                        break
                right.left = current              # link right
                right = current
                current = current.left
            elif key > current.key:
                if current.right is None:
                    break
                if key > current.right.key:
                    tmp = current.right           # rotate left
                    current.right = tmp.left
                    tmp.left = current
                    current = tmp
                    if current.right is None:
                        break
                left.right = current              # link left
                left = current
                current = current.right
            else:
                break
        left.right = current.left
        right.left = current.right
        current.left = dummy.right
        current.right = dummy.left
        self.root = current

    def walk(self):
        """Keys in order (iterative) and the height of the tree."""
        keys, stack, height = [], [], 0
        node, depth = self.root, 1
        while stack or node is not None:
            while node is not None:
                stack.append((node, depth))
                height = max(height, depth)
                node, depth = node.left, depth + 1
            node, depth = stack.pop()
            keys.append(node.key)
            node, depth = node.right, depth + 1
        return keys, height


def payload_tree(depth, tag):
    if depth == 0:
        return {"array": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
                "string": "String for key " + tag + " in leaf node"}
    return {"left": payload_tree(depth - 1, tag), "right": payload_tree(depth - 1, tag)}


def insert_new_node():
    while True:
        key = rng.random()
        if tree.find(key) is None:
            break
    tree.insert(key, payload_tree(PAYLOAD_DEPTH, repr(key)))
    return key


tree = SplayTree()
stats = {"ticks": 0, "removed_sum": 0.0, "inserted": 0}


def setup_slice():
    for _ in range(100):
        insert_new_node()
        stats["inserted"] += 1
    if tree.size < TREE_SIZE:
        things.set_immediate(setup_slice)
    else:
        print(f"setup: {tree.size} nodes, root {tree.root.key!r}")
        stats["timer"] = things.set_interval(modify, 0.05)


def modify():
    for _ in range(MODIFICATIONS):
        key = insert_new_node()
        stats["inserted"] += 1
        greatest = tree.find_greatest_less_than(key)
        removed = tree.remove(key if greatest is None else greatest.key)
        stats["removed_sum"] += removed.key
        leaf = removed.value
        while "left" in leaf:
            leaf = leaf["left"]
        assert leaf["string"].startswith("String for key ")
    stats["ticks"] += 1
    if stats["ticks"] % 8 == 0:
        keys, height = tree.walk()
        ordered = all(a < b for a, b in zip(keys, keys[1:]))
        print(f"tick {stats['ticks']:2d}: size {tree.size} height {height} "
              f"root {tree.root.key:.6f} sum {sum(keys):.9f} ordered={ordered}")
    if stats["ticks"] == TICKS:
        things.clear_timer(stats["timer"])
        keys, height = tree.walk()
        print(f"min {keys[0]!r} max {keys[-1]!r}")
        print(f"result: {stats['inserted']} inserted, size {tree.size}, "
              f"removed key sum {stats['removed_sum']:.9f}")


things.set_immediate(setup_slice)
