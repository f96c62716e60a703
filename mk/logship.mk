##@ Log shipping

# Debian's rsyslog (imfile and mmjsonparse) for the end-to-end test of
# shipping the drop log (docs/audit-log.md): the packages are downloaded and
# unpacked under bin/rsyslog, not installed, so no daemon starts and the
# machine's logging is untouched.
RSYSLOG_DIR ?= $(BIN)/rsyslog
RSYSLOG_PACKAGES := rsyslog libestr0 libfastjson4 liblognorm5

.PHONY: log-shipper
log-shipper: $(RSYSLOG_DIR)/usr/sbin/rsyslogd ## Unpack Debian's rsyslog into bin/rsyslog for the log-shipping test.

$(RSYSLOG_DIR)/usr/sbin/rsyslogd:
	rm -rf $(RSYSLOG_DIR).tmp && mkdir -p $(RSYSLOG_DIR).tmp/debs
	cd $(RSYSLOG_DIR).tmp/debs && { apt-get download $(RSYSLOG_PACKAGES) || { apt-get update -q && apt-get download $(RSYSLOG_PACKAGES); }; }
	for d in $(RSYSLOG_DIR).tmp/debs/*.deb; do dpkg-deb -x $$d $(RSYSLOG_DIR).tmp; done
	rm -rf $(RSYSLOG_DIR) && mv $(RSYSLOG_DIR).tmp $(RSYSLOG_DIR)
