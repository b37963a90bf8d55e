"""Copy order of the organization's tables: a topological sort, parents first, with the
dependency cycles it cannot order reported as strongly connected components. Pure."""

from __future__ import annotations

import heapq


def toposort(
    tables: list[str], depends_on: dict[str, list[str]], depth: dict[str, int]
) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """``tables`` parents first (ties: shallower first, then by name); the cycles that keep some
    tables out of the order, and the links of each cycle. Tables after a cycle come last."""
    org = tables
    indeg = {q: 0 for q in org}
    children: dict[str, list[str]] = {q: [] for q in org}
    for q in org:
        for d in depends_on[q]:
            indeg[q] += 1
            children[d].append(q)
    heap = [(depth[q], q) for q in org if indeg[q] == 0]
    heapq.heapify(heap)
    order: list[str] = []
    while heap:
        _, q = heapq.heappop(heap)
        order.append(q)
        for ch in children[q]:
            indeg[ch] -= 1
            if indeg[ch] == 0:
                heapq.heappush(heap, (depth[ch], ch))
    left = [q for q in org if q not in set(order)]
    if not left:
        return order, [], []
    left_set = set(left)
    deps = {q: [d for d in depends_on[q] if d in left_set] for q in left}
    cycles = [sorted(scc) for scc in sccs(left, deps) if len(scc) > 1]
    links = []
    for scc in cycles:
        members = set(scc)
        links.append(sorted(
            f"{q} -> {d}" for q in scc for d in depends_on[q] if d in members
        ))
    # Tables after a cycle still appear in the order (after it) so the report is complete.
    order.extend(sorted(left))
    return order, cycles, links


def sccs(nodes: list[str], deps: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for start in nodes:
        if start in index:
            continue
        work: list[tuple[str, int]] = [(start, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = counter
                counter += 1
                stack.append(v)
                on_stack.add(v)
            succ = deps.get(v, [])
            if i < len(succ):
                work.append((v, i + 1))
                w = succ[i]
                if w not in index:
                    work.append((w, 0))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                out.append(comp)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
    return out

