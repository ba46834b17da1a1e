"""A feasible width vector near a fractional one: rounding, repair and greedy
improvement over slot widths (the primal side of the pair-cost algorithm,
``optprune.alloc.bilinear``; the bound comes from the LP).

Applies when every slot is in width mode and the objective is ``max_importance``:
a selection is then a width per slot, its value the sum of the slots' curves, and
its usage of each resource linear in each slot's one-hot width plus the pair terms
c k_a k_b. Slots tied by equal counts move together (a group). Every move changes
one group by one allowed width; its effect on all budgets is computed for all
groups at once: the usage change of a step at group g is the change of g's own
table plus (k'_g - k_g) times sum_h C_{gh} k_h, with C the pair coefficients
between groups.
"""

from __future__ import annotations

import numpy as np

from .problem import AllocationProblem, Slot

_TOL = 1e-9


class WidthSpace:
    def __init__(self, problem: AllocationProblem) -> None:
        self.problem = problem
        slots = list(problem.slots())
        parent = {s: s for s in slots}

        def find(s: Slot) -> Slot:
            while parent[s] != s:
                parent[s] = parent[parent[s]]
                s = parent[s]
            return s

        for eq in problem.equal_counts:
            for s in eq[1:]:
                parent[find(s)] = find(eq[0])
        roots = list(dict.fromkeys(find(s) for s in slots))
        self.group_of = {s: roots.index(find(s)) for s in slots}
        self.members: list[list[Slot]] = [[] for _ in roots]
        for s in slots:
            self.members[self.group_of[s]].append(s)
        limits = problem.budget_limits()
        self.resources = [r for r, _, _ in limits]
        self.lo = np.array([lo for _, lo, _ in limits], dtype=np.float64)
        self.hi = np.array([hi for _, _, hi in limits], dtype=np.float64)
        self.cap = problem.latency_cap
        self._tables(problem)

    def _tables(self, p: AllocationProblem) -> None:
        """Padded per-group tables: options, value, own usage, latency."""
        G, R = len(self.members), len(self.resources)
        opts = []
        for group in self.members:
            o = p.allowed_counts(group[0])
            for s in group[1:]:
                o = np.intersect1d(o, p.allowed_counts(s))
            opts.append(o)
        self.size = np.array([o.size for o in opts], dtype=np.int64)
        width = int(max(1, self.size.max()))
        self.opts = np.zeros((G, width))
        self.value = np.full((G, width), -np.inf)
        self.own = np.zeros((R, G, width))
        self.lat = np.zeros((G, width))
        res = {r: j for j, r in enumerate(self.resources)}
        for g, (group, o) in enumerate(zip(self.members, opts)):
            n = o.size
            self.opts[g, :n] = o
            self.value[g, :n] = 0.0
            for s in group:
                idx = p.slots()[s]
                self.value[g, :n] += p.slot_curve(s)[o]
                for r, j in res.items():
                    self.own[j, g, :n] += float(p.costs[r][idx[0]]) * o
                if s in p.latency_tables:
                    self.lat[g, :n] += p.latency_tables[s].table[o]
        self.C = np.zeros((R, G, G))
        for pc in p.pair_costs:
            if pc.resource not in res:
                continue
            a, b = self.group_of[pc.slot_a], self.group_of[pc.slot_b]
            j = res[pc.resource]
            if a == b:  # k^2 within one group: part of the group's own table
                self.own[j, a, :] += pc.coef * self.opts[a] ** 2
            else:
                self.C[j, a, b] += pc.coef
                self.C[j, b, a] += pc.coef

    # ------------------------------------------------------------- evaluation
    def _k(self, pos: np.ndarray) -> np.ndarray:
        return self.opts[np.arange(pos.size), pos]

    def usage(self, pos: np.ndarray) -> np.ndarray:
        k = self._k(pos)
        g = np.arange(pos.size)
        return self.own[:, g, pos].sum(axis=1) + 0.5 * np.einsum("rgh,g,h->r", self.C, k, k)

    def objective(self, pos: np.ndarray) -> float:
        return float(self.value[np.arange(pos.size), pos].sum())

    def latency(self, pos: np.ndarray) -> float:
        return float(self.lat[np.arange(pos.size), pos].sum())

    def _slack(self, u: np.ndarray, lat: float) -> np.ndarray:
        """Room left under each upper limit (negative: broken), latency last."""
        s = self.hi - u + _TOL * np.maximum(1.0, np.abs(self.hi))
        if self.cap is not None:
            s = np.append(s, self.cap - lat + _TOL * max(1.0, self.cap))
        return s

    def feasible(self, pos: np.ndarray) -> bool:
        u = self.usage(pos)
        low = np.all(u >= self.lo - _TOL * np.maximum(1.0, np.abs(self.lo)))
        return bool(low and np.all(self._slack(u, self.latency(pos)) >= 0))

    def keep(self, pos: np.ndarray) -> np.ndarray:
        keep = np.zeros(self.problem.n, dtype=bool)
        for g, p in enumerate(pos):
            k = int(self.opts[g, p])
            for s in self.members[g]:
                keep[self.problem.slot_order(s)[:k]] = True
        return keep

    def _steps(self, pos: np.ndarray, step: int):
        """For every group, the effect of moving one allowed width up (+1) or down
        (-1): (valid, delta value, delta usage R x G, delta latency, delta k)."""
        G = pos.size
        g = np.arange(G)
        new = pos + step
        valid = (new >= 0) & (new < self.size)
        new = np.clip(new, 0, self.size - 1)
        k = self._k(pos)
        dk = self.opts[g, new] - k
        dv = np.where(valid, self.value[g, new] - self.value[g, pos], 0.0)
        du = self.own[:, g, new] - self.own[:, g, pos] + dk[None, :] * np.einsum(
            "rgh,h->rg", self.C, k)
        dl = self.lat[g, new] - self.lat[g, pos]
        return valid, dv, du, dl, dk

    # ----------------------------------------------------------------- search
    def round_down(self, mean_width: np.ndarray) -> np.ndarray:
        """Per group the largest allowed width at most the given (fractional) one."""
        pos = np.zeros(len(self.members), dtype=np.int64)
        for g in range(pos.size):
            o = self.opts[g, :self.size[g]]
            pos[g] = max(int(np.searchsorted(o, mean_width[g] + 1e-9, side="right")) - 1, 0)
        return pos

    def _scaled(self, pos: np.ndarray) -> np.ndarray:
        """The largest common fraction of ``pos``'s widths (each rounded down to an
        allowed width) that breaks no upper limit, by bisection."""
        k = self._k(pos)

        def at(f: float) -> np.ndarray:
            return self.round_down(f * k)

        if np.all(self._slack(self.usage(at(1.0)), self.latency(at(1.0))) >= 0):
            return at(1.0)
        lo, hi = 0.0, 1.0
        for _ in range(50):
            mid = (lo + hi) / 2
            q = at(mid)
            if np.all(self._slack(self.usage(q), self.latency(q)) >= 0):
                lo = mid
            else:
                hi = mid
        return at(lo)

    def search(self, pos: np.ndarray, max_moves: int = 1_000_000,
               deadline: float | None = None) -> np.ndarray | None:
        """Repair ``pos`` (first all widths scaled down together, then steps down,
        least value lost per unit of the most broken limit) until every upper limit
        holds, then improve until ``deadline``: steps up by best value per weighted
        usage, then exchanges of a step down and a step up. None if the repair fails
        or a lower budget limit is broken."""
        pos = self._scaled(np.asarray(pos, dtype=np.int64))
        w = 1.0 / np.maximum(np.abs(np.where(np.isfinite(self.hi), self.hi, 1.0)), 1e-12)
        if self.cap is not None:
            w = np.append(w, 1.0 / max(self.cap, 1e-12))
        for _ in range(max_moves):
            slack = self._slack(self.usage(pos), self.latency(pos))
            if np.all(slack >= 0):
                break
            valid, dv, du, dl, _ = self._steps(pos, -1)
            drop = np.vstack([du, dl[None, :]]) if self.cap is not None else du
            worst = int(np.argmin(slack * w))
            relief = -drop[worst]
            ok = valid & (relief > 0)
            if not ok.any():
                return None
            loss = -dv
            ratio = np.where(ok, relief / np.maximum(loss, 1e-300), -np.inf)
            pos[int(np.argmax(ratio))] -= 1
        else:
            return None
        pos = self._improve(pos, w, max_moves, deadline)
        return pos if self.feasible(pos) else None

    def _improve(self, pos: np.ndarray, w: np.ndarray, max_moves: int,
                 deadline: float | None) -> np.ndarray:
        import time

        for _ in range(max_moves):
            if deadline is not None and time.perf_counter() > deadline:
                return pos
            u, lat = self.usage(pos), self.latency(pos)
            slack = self._slack(u, lat)
            valid, dv, du, dl, dk = self._steps(pos, +1)
            use = np.vstack([du, dl[None, :]]) if self.cap is not None else du
            fits = valid & (dv > 0) & np.all(use <= slack[:, None], axis=0)
            if fits.any():
                ratio = np.where(fits, dv / np.maximum((w[:use.shape[0]] @ np.maximum(use, 0)),
                                                       1e-300), -np.inf)
                pos[int(np.argmax(ratio))] += 1
                continue
            swap = self._swap(pos, slack, (valid, dv, use, dk))
            if swap is None:
                return pos
            pos = swap
        return pos

    def _swap(self, pos: np.ndarray, slack: np.ndarray, up) -> np.ndarray | None:
        """The best feasible pair (g one step down, h one step up), if it gains."""
        valid_u, dv_u, use_u, dk_u = up
        valid_d, dv_d, du_d, dl_d, dk_d = self._steps(pos, -1)
        use_d = np.vstack([du_d, dl_d[None, :]]) if self.cap is not None else du_d
        gain = dv_u[None, :] + dv_d[:, None]  # [down g, up h]
        ok = valid_d[:, None] & valid_u[None, :] & (gain > _TOL * max(1.0, self.objective(pos)))
        np.fill_diagonal(ok, False)
        if not ok.any():
            return None
        # Usage change of both steps: each alone, plus the cross term C_gh dk_g dk_h.
        R = du_d.shape[0]
        total = use_d[:, :, None] + use_u[:, None, :]
        total[:R] += self.C * dk_d[None, :, None] * dk_u[None, None, :]
        ok &= np.all(total <= slack[:, None, None], axis=0)
        if not ok.any():
            return None
        d, h = np.unravel_index(int(np.argmax(np.where(ok, gain, -np.inf))), gain.shape)
        out = pos.copy()
        out[d] -= 1
        out[h] += 1
        return out
