"""Whether a guest works, not only whether its QEMU runs: readiness and liveness probes
(checks), their thresholds and the Ready and Live conditions they give (conditions), what
cloud-init says on the serial console (cloudinit), the guest's addresses (addresses), and the
scheduler that runs the probes of every running instance (prober).

Imports: the model, the drivers' interface, planning.addresses; never the loop or the CLI.
"""
