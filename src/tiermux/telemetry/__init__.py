"""What operators see: Prometheus metrics summed over the workers (``metrics``, ``exposition``),
what each request turned out to be (``record``) and the access log written from it (``access_log``)."""
