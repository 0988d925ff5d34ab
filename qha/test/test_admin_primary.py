"""
C{qha-admin primary}: the current primary's AMQP address, from etcd
(C{--coordinator}) or from the cluster of the broker given with C{-b}; and
the coordinator's part of C{query}.
"""

from __future__ import annotations

import io
import json

from qha.admin.cli import clusterAddresses, parseArguments, run
from qha.ha.coordinator import LeaderInfo
from qha.test.test_admin import AdminTestCase
from qha.testing_etcd import FakeEtcd


class PrimaryCommandTests(AdminTestCase):
    """
    C{primary}, against a fake etcd and in-memory brokers.
    """

    def setUp(self) -> None:
        """
        A fake etcd on the test's clock; the endpoints the command asked for.
        """
        super().setUp()
        self.etcd = FakeEtcd(self.clock)
        self.asked: list[list[str]] = []

    def runWithEtcd(self, *argv: str) -> tuple[int, str, str]:
        """
        Run C{qha-admin argv} with the fake etcd.
        """
        out, err = io.StringIO(), io.StringIO()

        def etcd(endpoints: list[str]) -> FakeEtcd:
            self.asked.append(endpoints)
            return self.etcd

        d = run(self.clock, parseArguments(list(argv)), self.connect, out, err, etcd)
        self.flush()
        return self.successResultOf(d), out.getvalue(), err.getvalue()

    def test_fromEtcd(self) -> None:
        """
        With C{--coordinator}, the leader key of C{--cluster-name} gives the
        address, without asking any broker.
        """
        leader = LeaderInfo("b1", 3, "10.0.0.1:5673", "10.0.0.1:5672")
        self.etcd.put(b"/qha/prod/leader", leader.toJSON())
        code, out, err = self.runWithEtcd(
            "primary", "--coordinator", "etcd:http://e1:2379,http://e2:2379", "--cluster-name", "prod"
        )
        self.assertEqual((code, out, err), (0, "10.0.0.1:5672\n", ""))
        self.assertEqual(self.asked, [["http://e1:2379", "http://e2:2379"]])

    def test_fromEtcdJSON(self) -> None:
        """
        C{--json} gives the leader's id and epoch too.
        """
        self.etcd.put(b"/qha/qha/leader", LeaderInfo("b1", 3, "a:1", "a:2").toJSON())
        code, out, _ = self.runWithEtcd("primary", "--coordinator", "etcd:http://e:2379", "--json")
        self.assertEqual(code, 0)
        self.assertEqual(json.loads(out), {"id": "b1", "epoch": 3, "amqp": "a:2"})

    def test_noLeader(self) -> None:
        """
        No leader key: exit 1, saying so.
        """
        code, out, err = self.runWithEtcd("primary", "--coordinator", "etcd:http://e:2379")
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(err, "qha-admin: no primary: the cluster has no leader now\n")

    def test_etcdUnreachable(self) -> None:
        """
        etcd does not answer: exit 1 naming it.
        """
        self.etcd.setAvailable(False)
        code, _, err = self.runWithEtcd("primary", "--coordinator", "etcd:http://e:2379")
        self.assertEqual(code, 1)
        self.assertTrue(err.startswith("qha-admin: etcd etcd:http://e:2379: "), err)

    def test_badCoordinator(self) -> None:
        """
        A coordinator that is not etcd: exit 1 with what is expected.
        """
        code, _, err = self.runWithEtcd("primary", "--coordinator", "zk:http://e:1")
        self.assertEqual(code, 1)
        self.assertIn("expected etcd:http://HOST:PORT", err)

    def test_standaloneBroker(self) -> None:
        """
        Without C{--coordinator}, a standalone broker is its own primary:
        its advertised AMQP address.
        """
        node = self.addNode()
        node.options.amqpAddress = "127.0.0.1:5672"
        code, out, err = self.runWithEtcd("primary")
        self.assertEqual((code, out, err), (0, "127.0.0.1:5672\n", ""))
        self.assertEqual(self.asked, [])


class ClusterAddressesTests(AdminTestCase):
    """
    The brokers C{--all} asks: C{--ha-brokers}, then etcd's members.
    """

    def test_brokersThenMembers(self) -> None:
        """
        Members registered in etcd that are not in C{--ha-brokers} are
        added, in order, once.
        """
        state = {
            "brokers": "h1:5673,h2:5673",
            "coordinator": {"members": [{"amp": "h2:5673"}, {"amp": "h3:5673"}, {"amp": ""}]},
        }
        self.assertEqual(
            clusterAddresses("h1:5673", state), ["h1:5673", "h2:5673", "h3:5673"]
        )

    def test_alone(self) -> None:
        """
        A broker that knows no other is asked alone.
        """
        self.assertEqual(clusterAddresses("h9:5673", {"brokers": ""}), ["h9:5673"])
