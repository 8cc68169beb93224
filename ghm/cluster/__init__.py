"""Ray beyond one embedded instance: the warm local head that sweeps without an address share
(:mod:`ghm.cluster.local_head`), the processes a cluster command starts and stops (:mod:`ghm.cluster.processes`),
and the TLS certificates of a cluster whose nodes sit on several hosts (:mod:`ghm.cluster.tls`).

``python -m ghm.cluster list|start|stop`` shows, starts and stops the warm heads; ``python -m ghm.cluster certs``
makes a cluster's CA and certificates.
"""
