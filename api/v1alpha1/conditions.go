package v1alpha1

// The status contract: the condition types, reasons and annotations the
// controller, the agents, the kubectl plugin and explain agree on.

// Condition types.
const (
	// ConditionProgrammed is the NodeRuleSet condition its agent sets: True
	// when the node's nftables table holds the rule set of
	// status.observedGeneration.
	ConditionProgrammed = "Programmed"
	// ConditionEnforced is the DefaultDeny condition that is True when every
	// node hosting a selected pod has programmed the current rule set.
	ConditionEnforced = "Enforced"
	// ConditionCNIChained is the NodeRuleSet condition its agent sets when
	// it runs with the CNI plugin: True when the container runtime's
	// network configuration runs the nftguard plugin last. While it is
	// False, pods the runtime starts are not announced to the agent and
	// stay not ready (their traffic is dropped).
	ConditionCNIChained = "CNIChained"
	// ConditionFirstPacket is the NodeRuleSet condition its agent sets:
	// True when traffic of pod-range addresses that are not ready is
	// dropped (pods are isolated from their first packet); False says which
	// part is missing (ReasonPluginDisabled, ReasonPodRangesUnknown).
	ConditionFirstPacket = "FirstPacketIsolation"
	// ConditionAuditLogReady is the NodeRuleSet condition its agent sets:
	// True while the drop log reads its NFLOG group and writes its file;
	// False (ReasonNFLOGUnavailable, ReasonWriteFailed) while either fails.
	// Enforcement does not depend on it: packets are dropped either way.
	ConditionAuditLogReady = "AuditLogReady"
	// ConditionEndpointsReady is the NodeRuleSet condition its agent sets:
	// True while it serves its metrics, health probe and drops endpoints;
	// False (ReasonListenFailed) names the ones whose address it cannot
	// bind. The agent programs its rule set either way.
	ConditionEndpointsReady = "EndpointsReady"
	// ConditionDropsDelivered is the NodeRuleSet condition its agent sets:
	// True while every replica of the drops API takes its drop log lines;
	// False (ReasonPushFailed, ReasonNoDropsServer) while one cannot, so
	// that the drops API misses lines of this node. The drop log file has
	// them either way.
	ConditionDropsDelivered = "DropsDelivered"
)

// Reasons of the NodeRuleSet conditions of the agent's optional parts.
const (
	// ReasonReady (True): the part works.
	ReasonReady = "Ready"
	// ReasonNFLOGUnavailable (AuditLogReady False): the NFLOG group cannot
	// be bound or read, another process holding it, say.
	ReasonNFLOGUnavailable = "NFLOGUnavailable"
	// ReasonWriteFailed (AuditLogReady False): the drop log cannot be
	// opened or written, a full disk, say; its lines are counted as lost.
	ReasonWriteFailed = "WriteFailed"
	// ReasonListenFailed (EndpointsReady False): an endpoint's address
	// cannot be bound, its port taken on the host network, say.
	ReasonListenFailed = "ListenFailed"
	// ReasonPushFailed (DropsDelivered False): a replica of the drops API
	// refuses the agent's lines or cannot be reached.
	ReasonPushFailed = "PushFailed"
	// ReasonNoDropsServer (DropsDelivered False): no replica of the drops
	// API is known (none is ready).
	ReasonNoDropsServer = "NoDropsServer"
)

// Reasons of the NodeRuleSet Programmed condition, set by the node's agent.
const (
	// ReasonProgrammed (True): the table holds the rule set.
	ReasonProgrammed = "Programmed"
	// ReasonAddressGroupMissing (True): referenced AddressGroups do not
	// exist; the table holds the rule set without the rules that reference
	// them (status.leftOut names their policies).
	ReasonAddressGroupMissing = "AddressGroupMissing"
	// ReasonRenderFailed (False): the rule set could not be rendered into a
	// table; the previous rule set stays in force.
	ReasonRenderFailed = "RenderFailed"
	// ReasonProgramFailed (False): the kernel refused the transaction; the
	// previous rule set stays in force. Also the reason of the DefaultDeny
	// Enforced condition and the NetworkPolicy Event when an agent failed.
	ReasonProgramFailed = "ProgramFailed"
	// ReasonUninstalled (False): the agent deleted the table because the
	// NodeRuleSet carries UninstallAnnotation; the node filters no traffic.
	// Also the reason of the DefaultDeny Enforced condition and the
	// NetworkPolicy Event when a node the policy needs is uninstalled.
	ReasonUninstalled = "Uninstalled"
)

// Reasons of the NodeRuleSet CNIChained and FirstPacketIsolation
// conditions (CNIChained also uses the installer's reasons: Chained,
// NoConfList, InvalidConfig, NotChained, BinaryMissing).
const (
	// ReasonHeldUntilReady (FirstPacketIsolation True): pod-range
	// addresses pass only once the agent has programmed their pod.
	ReasonHeldUntilReady = "HeldUntilReady"
	// ReasonPluginDisabled (False): the agent runs without the CNI plugin;
	// a new pod is not filtered until its node programs it.
	ReasonPluginDisabled = "PluginDisabled"
	// ReasonPodRangesUnknown (False): neither Node.spec.podCIDRs nor the
	// agent's --pod-cidrs give the node's pod ranges, so addresses that are
	// not ready cannot be told from others and are not dropped.
	ReasonPodRangesUnknown = "PodRangesUnknown"
)

// Reasons of the Events the agent records on pods.
const (
	// ReasonNotReady (Warning): the pod stayed not ready past the agent's
	// --not-ready-warning bound; its traffic is still dropped.
	ReasonNotReady = "NotReady"
	// ReasonReleased (Warning): the pod stayed not ready past the agent's
	// --not-ready-release bound and now passes without its policies.
	ReasonReleased = "Released"
)

// Reasons of the DefaultDeny Enforced condition and of the Events on
// NetworkPolicies (besides ReasonProgramFailed and ReasonUninstalled).
const (
	// ReasonEnforced (True): every node the policy spans programmed it.
	ReasonEnforced = "Enforced"
	// ReasonNoSelectedPods (True): the policy selects no pod.
	ReasonNoSelectedPods = "NoSelectedPods"
	// ReasonProgramming (False): some node has not programmed it yet.
	ReasonProgramming = "Programming"
	// ReasonRuleSetTooLarge (False): the compiled rule set of some node, or
	// an address group it references, exceeds the object size limit. Also
	// the reason the controller records in a NodeRuleSet's spec.unwritten
	// and on a warning Event on the Node when the node's own rule set is
	// too large.
	ReasonRuleSetTooLarge = "RuleSetTooLarge"
	// ReasonAddressGroupTooLarge is the reason of spec.unwritten, and of the
	// warning Event on the Node, when an address group the rule set
	// references exceeds the object size limit.
	ReasonAddressGroupTooLarge = "AddressGroupTooLarge"
	// ReasonInvalidSelector (False): a label selector of the DefaultDeny
	// breaks Kubernetes' label syntax. Admission rejects such selectors;
	// one stored before it did is enforced closed where it can be scoped:
	// an invalid podSelector isolates every pod of the selected namespaces,
	// an invalid peer selector allows nothing, and an invalid
	// namespaceSelector selects no namespace.
	ReasonInvalidSelector = "InvalidSelector"
	// ReasonNotEnforced is the reason of the warning Event on a
	// NetworkPolicy in nftguard's own namespace, whose pods no policy
	// isolates.
	ReasonNotEnforced = "NotEnforced"
)

// UninstallAnnotation on a NodeRuleSet asks its agent to delete the node's
// nftables table and stop programming it; the agent then reports
// Programmed=False with reason Uninstalled. Removing it programs the rule
// set again.
const UninstallAnnotation = "nftguard.io/uninstall"
