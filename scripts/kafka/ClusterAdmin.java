// What the test cluster's harness asks of Kafka's own Admin API that
// librdkafka does not offer: where the leaders are, moving a leader
// (reassignment with the target first, then a preferred election), and which
// broker coordinates a transactional id or a consumer group.
//
// Run through `scripts/kafka-cluster.sh admin …` (compiled once against the
// broker's own jars). Every command prints plain lines on stdout and exits 0,
// or prints one line on stderr and exits 1; every wait is bounded.
//
//   leaders BOOTSTRAP TOPIC                  "partition leader r1,r2,r3 isr1,isr2"
//   move-leader BOOTSTRAP TOPIC PARTITION NODE
//   txn-coordinator BOOTSTRAP TRANSACTIONAL_ID
//   group-coordinator BOOTSTRAP GROUP_ID
//   add-scram-user BOOTSTRAP USER PASSWORD   SCRAM-SHA-256 and -512 credentials

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.TimeUnit;
import java.util.stream.Collectors;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewPartitionReassignment;
import org.apache.kafka.clients.admin.ScramCredentialInfo;
import org.apache.kafka.clients.admin.ScramMechanism;
import org.apache.kafka.clients.admin.UserScramCredentialAlteration;
import org.apache.kafka.clients.admin.UserScramCredentialUpsertion;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.common.ElectionType;
import org.apache.kafka.common.Node;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.TopicPartitionInfo;
import org.apache.kafka.common.errors.ElectionNotNeededException;

public final class ClusterAdmin {
    private static final long TIMEOUT_MS = 30_000;

    public static void main(String[] args) {
        try {
            run(args);
        } catch (Exception error) {
            Throwable cause = error.getCause() != null ? error.getCause() : error;
            System.err.println("cluster-admin: " + String.join(" ", args) + ": " + cause);
            System.exit(1);
        }
        System.exit(0);
    }

    private static void run(String[] args) throws Exception {
        if (args.length < 3) {
            throw new IllegalArgumentException(
                "usage: leaders|move-leader|txn-coordinator|group-coordinator|add-scram-user BOOTSTRAP ARG...");
        }
        Properties properties = new Properties();
        properties.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[1]);
        properties.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "10000");
        properties.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, String.valueOf(TIMEOUT_MS));
        try (Admin admin = Admin.create(properties)) {
            switch (args[0]) {
                case "leaders" -> printLeaders(admin, args[2]);
                case "move-leader" -> {
                    if (args.length != 5) {
                        throw new IllegalArgumentException("move-leader BOOTSTRAP TOPIC PARTITION NODE");
                    }
                    moveLeader(admin, new TopicPartition(args[2], Integer.parseInt(args[3])),
                        Integer.parseInt(args[4]));
                }
                case "txn-coordinator" -> System.out.println(admin
                    .describeTransactions(List.of(args[2])).description(args[2])
                    .get(TIMEOUT_MS, TimeUnit.MILLISECONDS).coordinatorId());
                case "group-coordinator" -> System.out.println(admin
                    .describeConsumerGroups(List.of(args[2])).describedGroups().get(args[2])
                    .get(TIMEOUT_MS, TimeUnit.MILLISECONDS).coordinator().id());
                case "add-scram-user" -> {
                    if (args.length != 4) {
                        throw new IllegalArgumentException("add-scram-user BOOTSTRAP USER PASSWORD");
                    }
                    // One alteration per user and request.
                    for (ScramMechanism mechanism : List.of(
                            ScramMechanism.SCRAM_SHA_256, ScramMechanism.SCRAM_SHA_512)) {
                        List<UserScramCredentialAlteration> credential = List.of(
                            new UserScramCredentialUpsertion(
                                args[2], new ScramCredentialInfo(mechanism, 4096), args[3]));
                        admin.alterUserScramCredentials(credential).all()
                            .get(TIMEOUT_MS, TimeUnit.MILLISECONDS);
                    }
                }
                default -> throw new IllegalArgumentException("unknown command " + args[0]);
            }
        }
    }

    private static TopicDescription describe(Admin admin, String topic) throws Exception {
        return admin.describeTopics(List.of(topic)).allTopicNames()
            .get(TIMEOUT_MS, TimeUnit.MILLISECONDS).get(topic);
    }

    private static String ids(List<Node> nodes) {
        return nodes.stream().map(node -> String.valueOf(node.id())).collect(Collectors.joining(","));
    }

    private static void printLeaders(Admin admin, String topic) throws Exception {
        for (TopicPartitionInfo info : describe(admin, topic).partitions()) {
            int leader = info.leader() == null ? -1 : info.leader().id();
            System.out.println(info.partition() + " " + leader + " " + ids(info.replicas()) + " "
                + ids(info.isr()));
        }
    }

    private static TopicPartitionInfo partitionInfo(Admin admin, TopicPartition partition)
            throws Exception {
        for (TopicPartitionInfo info : describe(admin, partition.topic()).partitions()) {
            if (info.partition() == partition.partition()) {
                return info;
            }
        }
        throw new IllegalArgumentException("no partition " + partition);
    }

    /// Moves the leadership of `partition` to `node`: the same replicas with
    /// `node` first, then a preferred election. Waits until the leader is
    /// `node` and prints it.
    private static void moveLeader(Admin admin, TopicPartition partition, int node) throws Exception {
        long deadline = System.currentTimeMillis() + TIMEOUT_MS;
        TopicPartitionInfo info = partitionInfo(admin, partition);
        List<Integer> replicas = new ArrayList<>();
        replicas.add(node);
        for (Node replica : info.replicas()) {
            if (replica.id() != node) {
                replicas.add(replica.id());
            }
        }
        if (replicas.size() != info.replicas().size()) {
            throw new IllegalArgumentException("node " + node + " holds no replica of " + partition);
        }
        if (info.replicas().get(0).id() != node) {
            admin.alterPartitionReassignments(
                    Map.of(partition, Optional.of(new NewPartitionReassignment(replicas))))
                .all().get(TIMEOUT_MS, TimeUnit.MILLISECONDS);
            while (!admin.listPartitionReassignments(Set.of(partition)).reassignments()
                    .get(TIMEOUT_MS, TimeUnit.MILLISECONDS).isEmpty()) {
                waitOrFail(deadline, "the reassignment of " + partition + " to finish");
            }
        }
        while (true) {
            info = partitionInfo(admin, partition);
            if (info.leader() != null && info.leader().id() == node) {
                System.out.println(partition.partition() + " " + node);
                return;
            }
            try {
                admin.electLeaders(ElectionType.PREFERRED, Set.of(partition)).partitions()
                    .get(TIMEOUT_MS, TimeUnit.MILLISECONDS).get(partition)
                    .ifPresent(error -> {
                        if (!(error instanceof ElectionNotNeededException)) {
                            System.err.println("cluster-admin: election of " + partition + ": " + error);
                        }
                    });
            } catch (java.util.concurrent.ExecutionException error) {
                System.err.println("cluster-admin: election of " + partition + ": " + error.getCause());
            }
            waitOrFail(deadline, "node " + node + " to lead " + partition
                + " (in sync: " + ids(info.isr()) + ")");
        }
    }

    private static void waitOrFail(long deadline, String what) throws Exception {
        if (System.currentTimeMillis() > deadline) {
            throw new IllegalStateException("timed out waiting for " + what);
        }
        Thread.sleep(200);
    }

    private ClusterAdmin() {}
}
