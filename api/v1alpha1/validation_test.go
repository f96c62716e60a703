package v1alpha1_test

import (
	"fmt"
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/discovery"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	v1alpha1 "github.com/nftguard/nftguard/api/v1alpha1"
)

// createYAML creates the object a user would write; the API server validates it.
func createYAML(doc string) error {
	u := &unstructured.Unstructured{}
	Expect(yaml.Unmarshal([]byte(doc), &u.Object)).To(Succeed())
	return k8s.Create(ctx, u)
}

var seq int

func dd(spec string) string {
	seq++
	return fmt.Sprintf("apiVersion: nftguard.io/v1alpha1\nkind: DefaultDeny\nmetadata:\n  name: dd-%d\nspec:\n%s", seq, spec)
}

var _ = Describe("DefaultDeny admission", func() {
	It("accepts a baseline with DNS allowed and fills in the defaults", func() {
		Expect(createYAML(`apiVersion: nftguard.io/v1alpha1
kind: DefaultDeny
metadata:
  name: baseline
spec:
  namespaceSelector:
    matchExpressions:
    - {key: kubernetes.io/metadata.name, operator: NotIn, values: [kube-system]}
  allowedEgress:
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}
      podSelector: {matchLabels: {k8s-app: kube-dns}}
    ports:
    - {protocol: UDP, port: 53}
    - {port: dns-tcp}
  - to:
    - ipBlock: {cidr: 198.18.0.0/16, except: [198.18.1.0/24]}
    ports:
    - {port: 8000, endPort: 8080}
`)).To(Succeed())
		got := &v1alpha1.DefaultDeny{}
		Expect(k8s.Get(ctx, client.ObjectKey{Name: "baseline"}, got)).To(Succeed())
		Expect(got.Spec.Mode).To(Equal(v1alpha1.ModeEnforce))
		Expect(got.Spec.PolicyTypes).To(ConsistOf(v1alpha1.PolicyTypeIngress, v1alpha1.PolicyTypeEgress))
		Expect(*got.Spec.AllowedEgress[0].Ports[1].Protocol).To(Equal(v1alpha1.ProtocolTCP))
	})

	It("accepts an Audit DefaultDeny for IPv6 blocks", func() {
		Expect(createYAML(dd(`  namespaceSelector: {}
  mode: Audit
  policyTypes: [Ingress]
  allowedIngress:
  - from:
    - ipBlock: {cidr: "fd00::/64", except: ["fd00::/96"]}
`))).To(Succeed())
	})

	It("accepts every label key and value Kubernetes accepts", func() {
		Expect(createYAML(dd(`  namespaceSelector:
    matchLabels: {"example.com/team": "", "Team_2.b": "` + strings.Repeat("v", 63) + `"}
    matchExpressions:
    - {key: "` + strings.Repeat("p", 253) + `/` + strings.Repeat("n", 63) + `", operator: NotIn, values: ["", a-b_c.d, "9"]}
`))).To(Succeed())
	})

	DescribeTable("rejects invalid resources with a message naming the field",
		func(spec string, field string, message string) {
			err := createYAML(dd(spec))
			Expect(err).To(HaveOccurred())
			Expect(apierrors.IsInvalid(err)).To(BeTrue(), "want an Invalid error, got %v", err)
			Expect(err.Error()).To(ContainSubstring(field))
			Expect(err.Error()).To(ContainSubstring(message))
		},
		Entry("unknown mode", `  namespaceSelector: {}
  mode: Block
`, "spec.mode", `supported values: "Enforce", "Audit"`),
		Entry("unknown policyType", `  namespaceSelector: {}
  policyTypes: [Ingress, Sideways]
`, "spec.policyTypes[1]", `supported values: "Ingress", "Egress"`),
		Entry("missing namespaceSelector", `  mode: Enforce
`, "spec.namespaceSelector", "Required value"),
		Entry("bad namespace selector operator", `  namespaceSelector:
    matchExpressions: [{key: team, operator: Equals, values: [a]}]
`, "spec.namespaceSelector.matchExpressions[0].operator", `supported values: "In", "NotIn", "Exists", "DoesNotExist"`),
		Entry("bad pod selector operator in a peer", `  namespaceSelector: {}
  allowedIngress:
  - from:
    - podSelector:
        matchExpressions: [{key: app, operator: Like, values: [web]}]
`, "spec.allowedIngress[0].from[0].podSelector.matchExpressions[0].operator", `supported values: "In", "NotIn", "Exists", "DoesNotExist"`),
		Entry("In without values", `  namespaceSelector:
    matchExpressions: [{key: team, operator: In}]
`, "spec.namespaceSelector.matchExpressions[0]", "values must be non-empty for In and NotIn"),
		Entry("invalid CIDR", `  namespaceSelector: {}
  allowedEgress:
  - to:
    - ipBlock: {cidr: 198.18.0.0/33}
`, "spec.allowedEgress[0].to[0].ipBlock", "cidr must be a CIDR"),
		Entry("except outside its CIDR", `  namespaceSelector: {}
  allowedEgress:
  - to:
    - ipBlock: {cidr: 198.18.0.0/24, except: [198.19.0.0/25]}
`, "spec.allowedEgress[0].to[0].ipBlock", "every except entry must be a strict subset of cidr"),
		Entry("except equal to its CIDR", `  namespaceSelector: {}
  allowedIngress:
  - from:
    - ipBlock: {cidr: 198.18.0.0/24, except: [198.18.0.0/24]}
`, "spec.allowedIngress[0].from[0].ipBlock", "every except entry must be a strict subset of cidr"),
		Entry("except that is not a CIDR", `  namespaceSelector: {}
  allowedIngress:
  - from:
    - ipBlock: {cidr: 198.18.0.0/24, except: [nonsense]}
`, "spec.allowedIngress[0].from[0].ipBlock", "every except entry must be a CIDR"),
		Entry("port 0", `  namespaceSelector: {}
  allowedEgress:
  - ports: [{port: 0}]
`, "spec.allowedEgress[0].ports[0]", "port must be between 1 and 65535"),
		Entry("port above 65535", `  namespaceSelector: {}
  allowedIngress:
  - ports: [{protocol: UDP, port: 70000}]
`, "spec.allowedIngress[0].ports[0]", "port must be between 1 and 65535"),
		Entry("endPort below port", `  namespaceSelector: {}
  allowedIngress:
  - ports: [{port: 8080, endPort: 80}]
`, "spec.allowedIngress[0].ports[0]", "endPort must be greater than or equal to port"),
		Entry("endPort with a named port", `  namespaceSelector: {}
  allowedIngress:
  - ports: [{port: http, endPort: 80}]
`, "spec.allowedIngress[0].ports[0]", "endPort requires a numeric port"),
		Entry("invalid named port", `  namespaceSelector: {}
  allowedIngress:
  - ports: [{port: "Not_A_Name"}]
`, "spec.allowedIngress[0].ports[0]", "a named port must be an IANA service name"),
		Entry("unknown protocol", `  namespaceSelector: {}
  allowedIngress:
  - ports: [{protocol: ICMP, port: 1}]
`, "spec.allowedIngress[0].ports[0].protocol", `supported values: "TCP", "UDP", "SCTP"`),
		Entry("peer mixing ipBlock and selectors", `  namespaceSelector: {}
  allowedIngress:
  - from:
    - ipBlock: {cidr: 198.18.0.0/24}
      podSelector: {}
`, "spec.allowedIngress[0].from[0]", "a peer sets ipBlock alone, or podSelector and/or namespaceSelector"),
		Entry("empty peer", `  namespaceSelector: {}
  allowedIngress:
  - from:
    - {}
`, "spec.allowedIngress[0].from[0]", "a peer sets ipBlock alone, or podSelector and/or namespaceSelector"),
		Entry("bad label key in matchLabels", `  namespaceSelector:
    matchLabels: {"team name": a}
`, "spec.namespaceSelector.matchLabels", `label keys must be qualified names`),
		Entry("bad label key prefix in matchLabels", `  namespaceSelector:
    matchLabels: {"Example.COM/team": a}
`, "spec.namespaceSelector.matchLabels", `label keys must be qualified names`),
		Entry("bad label value in matchLabels", `  namespaceSelector: {}
  podSelector:
    matchLabels: {app: "web/api"}
`, "spec.podSelector.matchLabels.app", `Invalid value: "web/api"`),
		Entry("label value too long in matchLabels", `  namespaceSelector:
    matchLabels: {team: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa}
`, "spec.namespaceSelector.matchLabels.team", "may not be more than 63"),
		Entry("bad key in a requirement", `  namespaceSelector:
    matchExpressions: [{key: "-team", operator: Exists}]
`, "spec.namespaceSelector.matchExpressions[0].key", `Invalid value: "-team"`),
		Entry("key prefix too long in a requirement", `  namespaceSelector:
    matchExpressions: [{key: "`+strings.Repeat("a", 254)+`/team", operator: Exists}]
`, "spec.namespaceSelector.matchExpressions[0].key", "the prefix of a label key (before '/') must be at most 253 characters"),
		Entry("value too long in a requirement", `  namespaceSelector:
    matchExpressions: [{key: team, operator: In, values: [`+strings.Repeat("b", 64)+`]}]
`, "spec.namespaceSelector.matchExpressions[0].values[0]", "may not be more than 63"),
		Entry("NotIn with one bad value among good ones", `  namespaceSelector: {}
  allowedIngress:
  - from:
    - namespaceSelector:
        matchExpressions: [{key: team, operator: NotIn, values: [red, "blue green", yellow]}]
`, "spec.allowedIngress[0].from[0].namespaceSelector.matchExpressions[0].values[1]", `Invalid value: "blue green"`),
		Entry("allowedEgress without Egress isolation", `  namespaceSelector: {}
  policyTypes: [Ingress]
  allowedEgress:
  - ports: [{port: 53, protocol: UDP}]
`, "spec", "allowedEgress requires Egress in policyTypes"),
	)
})

var _ = Describe("Categories", func() {
	It("puts DefaultDenies and NodeRuleSets in nftguard, and AddressGroups only under their own names", func() {
		dc, err := discovery.NewDiscoveryClientForConfig(cfg)
		Expect(err).NotTo(HaveOccurred())
		resources, err := dc.ServerResourcesForGroupVersion(v1alpha1.GroupVersion.String())
		Expect(err).NotTo(HaveOccurred())
		categories, shortNames := map[string][]string{}, map[string][]string{}
		for _, r := range resources.APIResources {
			categories[r.Name], shortNames[r.Name] = r.Categories, r.ShortNames
		}
		Expect(categories["defaultdenies"]).To(ConsistOf("nftguard"))
		Expect(categories["noderulesets"]).To(ConsistOf("nftguard"))
		Expect(categories["addressgroups"]).To(BeEmpty())
		Expect(shortNames["addressgroups"]).To(ConsistOf("ag"))
	})
})
