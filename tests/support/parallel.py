"""How the suite runs in parallel: pytest-xdist workers (``make test``: ``-n 3 --dist loadgroup``).

Every test is a unit of its own, given to whichever worker is free, except the tests of a
group in ``GROUPS``, which run one after another, in the collection's order, on one worker:
they share a server that only one process may own, or that costs much to start. A group
goes to its worker as that worker's first unit, so the worker knows at its session start
that the group is its own and brings the server up in the background while the other
workers run the rest: the kind cluster (tests/kind/conftest.py), the control plane (tests/support/cluster_fixtures.py),
Keycloak (tests/support/keycloak.py).
Any worker beyond those runs ungrouped tests from the start (``-n 3``: one).

Groups are named by path here, not by ``@pytest.mark.xdist_group``: pytest-xdist 3.8 groups
by renaming ``item._nodeid``, which pytest 9.2 no longer reads (node ids come from
``item._id``), so under this pytest its loadgroup spreads a marked group over the workers.

Every other session fixture is per worker: each worker has its own redis-server, S3 server
and toxiproxy, on free ports, in its own temporary folders (and a control plane of its own,
started on first use, if it is given a test outside the group that asks for one).

Loaded by tests/conftest.py; a session without ``-n`` (or with ``-p no:xdist``) runs every
group itself.
"""

from __future__ import annotations

import pytest

#: the kind tests: one cluster per session, made and deleted by the worker that runs them
KIND = "kind"
#: the tests on the control plane (tests/support/cluster_fixtures.py): one per worker would
#: cost each worker a minute of CPU under load to start, so one worker runs them all
CLUSTER = "cluster"
#: the tests that sign in through Keycloak (tests/support/keycloak.py): one JVM per session,
#: ~450 MB and a long CPU-heavy start, so one worker runs them all
KEYCLOAK = "keycloak"
#: group → (the node id prefixes of its tests, the worker that runs it, or None: any one)
GROUPS: dict[str, tuple[tuple[str, ...], str | None]] = {
    KIND: (("tests/kind/",), "gw0"),
    CLUSTER: (("tests/cluster/", "tests/reliability/test_operator_stalls.py", "tests/reliability/test_rbac.py"), "gw1"),
    KEYCLOAK: (("tests/integration/test_auth.py", "tests/browser/test_sign_in.py"), "gw2"),
    # one case per endpoint; its module's app checks at the end that some case got a 200
    "schema-fuzz": (("tests/reliability/test_schema_fuzz.py",), None),
    # one chromium for the folder, closed after it (tests/browser/conftest.py)
    "browser": (("tests/browser/",), None),
}


#: groups whose worker knows them by its id (``runs_group``), not by receiving them first, so
#: they are given to it last: Keycloak comes up in the background while it runs the rest
LATE = {KEYCLOAK}


def group_of(nodeid: str) -> str | None:
    for name, (prefixes, _) in GROUPS.items():
        if nodeid.startswith(prefixes):
            return name
    return None


def worker_id(config: pytest.Config) -> str | None:
    """``gw0``, ``gw1``, ... in an xdist worker; None in a session of its own."""
    workerinput = getattr(config, "workerinput", None)
    return workerinput["workerid"] if workerinput else None


def runs_group(config: pytest.Config, group: str) -> bool:
    """Whether this process is the one that runs ``group``'s tests (a session of its own
    runs them all; an xdist worker, the groups given to it)."""
    wid = worker_id(config)
    return wid is None or GROUPS[group][1] == wid


@pytest.hookimpl(optionalhook=True, tryfirst=True)  # before xdist's own: the first answer is taken
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class GroupScheduling(LoadGroupScheduling):
        """loadgroup with the groups of ``GROUPS``: each to its worker, first, and to no
        other (to another only if its worker is gone: its tests then fail there, saying why)."""

        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid) or super()._split_scope(nodeid)

        def _takeable(self, node) -> list[str]:
            """The units ``node`` may take, its own group first."""
            present = {n.gateway.id for n in self.nodes}
            owner = {s: GROUPS[s][1] for s in self.workqueue if s in GROUPS}
            own = [s for s, w in owner.items() if w == node.gateway.id]
            # a group whose server the worker starts from its session start anyway (LATE)
            # waits for it best at the end: the worker runs other tests meanwhile
            first, late = [s for s in own if s not in LATE], [s for s in own if s in LATE]
            return first + [s for s in self.workqueue if s not in owner or owner[s] not in present] + late

        def _assign_work_unit(self, node) -> None:
            takeable = self._takeable(node)
            if not takeable:
                return
            scope = takeable[0]
            work_unit = self.workqueue.pop(scope)
            self.assigned_work.setdefault(node, {})[scope] = work_unit
            # every item of the unit's node ids: under pytest 9.2 schemathesis gives all the
            # cases of one test the same node id (xdist's own would send the first only)
            pending = {nodeid for nodeid, done in work_unit.items() if not done}
            node.send_runtest_some([i for i, nodeid in enumerate(self.registered_collections[node]) if nodeid in pending])

        def _reschedule(self, node) -> None:
            if not node.shutting_down and self.workqueue and not self._takeable(node):
                node.shutdown()  # nothing left that this worker may take: it ends after its own
                return
            super()._reschedule(node)

    return GroupScheduling(config, log)
