"""Benchmark harness: the product against rclone, s5cmd and the AWS CLI on a loopback SeaweedFS.

    python -m bench.run [--scenarios 1,2,3,4] [--rounds N] [--objects N] [--quick]
"""
