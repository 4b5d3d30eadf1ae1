from twisted.application.service import ServiceMaker
stsd = ServiceMaker("stsd", "stsd.tap", "Security Token Service for MinIO tenants on Kubernetes", "stsd")
