# -*- test-case-name: tests.test_testing_kit -*-
"""
A simulated cluster for tests: strict fakes of the Kubernetes API server
and MinIO over loopback TLS, and the real stsd daemon run against them.

For applications' own test suites (README, "Testing your application
against stsd"):

  - L{stsd.testing.cluster.Cluster}: the cluster and a running daemon, with
    helpers to bind a ServiceAccount and mint its token;
  - L{stsd.testing.pytest_plugin}: pytest fixtures (C{stsd_cluster}, ...),
    registered by the C{pytest11} entry point C{stsd};
  - L{stsd.testing.trial}: C{ClusterTestCase} and C{ClusterMixin} for trial.

The parts: L{stsd.testing.world} (the fakes wired together, the daemon
process), L{stsd.testing.fake_kube}, L{stsd.testing.fake_minio} (with
L{stsd.testing.fake_s3}), L{stsd.testing.pki}, L{stsd.testing.tokens}.
"""
