package examples

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// The parts of the Kubernetes objects the tests read; no client library.

type k8sMeta struct {
	Name      string            `yaml:"name"`
	Namespace string            `yaml:"namespace"`
	Labels    map[string]string `yaml:"labels"`
}

type k8sSelector struct {
	MatchLabels map[string]string `yaml:"matchLabels"`
}

// selects reports whether the selector matches labels (matchLabels only;
// the manifests use nothing else).
func (s *k8sSelector) selects(labels map[string]string) bool {
	if s == nil || len(s.MatchLabels) == 0 {
		return false // these manifests never mean "everything"
	}
	for k, v := range s.MatchLabels {
		if labels[k] != v {
			return false
		}
	}
	return true
}

type k8sObject struct {
	APIVersion string  `yaml:"apiVersion"`
	Kind       string  `yaml:"kind"`
	Metadata   k8sMeta `yaml:"metadata"`
	file       string
	node       yaml.Node
}

type k8sPort struct {
	Name          string `yaml:"name"`
	ContainerPort int    `yaml:"containerPort"`
	Port          any    `yaml:"port"`
	TargetPort    any    `yaml:"targetPort"`
	Protocol      string `yaml:"protocol"`
}

type k8sProbe struct {
	HTTPGet *struct {
		Path string `yaml:"path"`
		Port any    `yaml:"port"`
	} `yaml:"httpGet"`
}

type k8sSecurityContext struct {
	RunAsNonRoot             *bool `yaml:"runAsNonRoot"`
	RunAsUser                *int  `yaml:"runAsUser"`
	AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
	ReadOnlyRootFilesystem   *bool `yaml:"readOnlyRootFilesystem"`
	Capabilities             struct {
		Drop []string `yaml:"drop"`
	} `yaml:"capabilities"`
}

type k8sContainer struct {
	Name            string             `yaml:"name"`
	Args            []string           `yaml:"args"`
	Ports           []k8sPort          `yaml:"ports"`
	ReadinessProbe  *k8sProbe          `yaml:"readinessProbe"`
	LivenessProbe   *k8sProbe          `yaml:"livenessProbe"`
	SecurityContext k8sSecurityContext `yaml:"securityContext"`
	VolumeMounts    []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
		SubPath   string `yaml:"subPath"`
		ReadOnly  bool   `yaml:"readOnly"`
	} `yaml:"volumeMounts"`
}

type k8sDeployment struct {
	Spec struct {
		Replicas *int        `yaml:"replicas"`
		Selector k8sSelector `yaml:"selector"`
		Template struct {
			Metadata k8sMeta `yaml:"metadata"`
			Spec     struct {
				TerminationGracePeriodSeconds *int               `yaml:"terminationGracePeriodSeconds"`
				SecurityContext               k8sSecurityContext `yaml:"securityContext"`
				Containers                    []k8sContainer     `yaml:"containers"`
				Volumes                       []struct {
					Name      string `yaml:"name"`
					ConfigMap *struct {
						Name  string `yaml:"name"`
						Items []struct {
							Key  string `yaml:"key"`
							Path string `yaml:"path"`
						} `yaml:"items"`
					} `yaml:"configMap"`
				} `yaml:"volumes"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type k8sService struct {
	Spec struct {
		Selector map[string]string `yaml:"selector"`
		Ports    []k8sPort         `yaml:"ports"`
	} `yaml:"spec"`
}

type k8sConfigMap struct {
	Data map[string]string `yaml:"data"`
}

type k8sPeer struct {
	NamespaceSelector *k8sSelector `yaml:"namespaceSelector"`
	PodSelector       *k8sSelector `yaml:"podSelector"`
	IPBlock           *struct {
		CIDR string `yaml:"cidr"`
	} `yaml:"ipBlock"`
}

type k8sNetworkPolicy struct {
	Spec struct {
		PodSelector k8sSelector `yaml:"podSelector"`
		PolicyTypes []string    `yaml:"policyTypes"`
		Ingress     []struct {
			From  []k8sPeer `yaml:"from"`
			Ports []k8sPort `yaml:"ports"`
		} `yaml:"ingress"`
		Egress []struct {
			To    []k8sPeer `yaml:"to"`
			Ports []k8sPort `yaml:"ports"`
		} `yaml:"egress"`
	} `yaml:"spec"`
}

type k8sPDB struct {
	Spec struct {
		MinAvailable   any         `yaml:"minAvailable"`
		MaxUnavailable any         `yaml:"maxUnavailable"`
		Selector       k8sSelector `yaml:"selector"`
	} `yaml:"spec"`
}

// loadManifests reads every document of every .yaml file in kubernetes/.
func loadManifests(t *testing.T) []k8sObject {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("kubernetes", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in kubernetes/: %v", err)
	}
	var objs []k8sObject
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(fh)
		for i := 1; ; i++ {
			var o k8sObject
			if err := dec.Decode(&o.node); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("%s document %d: %v", f, i, err)
			}
			if err := o.node.Decode(&o); err != nil {
				t.Fatalf("%s document %d: %v", f, i, err)
			}
			if o.Kind == "" || o.APIVersion == "" || o.Metadata.Name == "" {
				t.Fatalf("%s document %d lacks kind, apiVersion or metadata.name", f, i)
			}
			if o.Kind != "Namespace" && o.Metadata.Namespace == "" {
				t.Errorf("%s: %s %s has no namespace", f, o.Kind, o.Metadata.Name)
			}
			o.file = f
			objs = append(objs, o)
		}
		fh.Close()
	}
	return objs
}

// one decodes the only object of kind (and name, if given) into v.
func one(t *testing.T, objs []k8sObject, kind, name string, v any) k8sObject {
	t.Helper()
	var found []k8sObject
	for _, o := range objs {
		if o.Kind == kind && (name == "" || o.Metadata.Name == name) {
			found = append(found, o)
		}
	}
	if len(found) != 1 {
		t.Fatalf("want exactly one %s %q, have %d", kind, name, len(found))
	}
	if err := found[0].node.Decode(v); err != nil {
		t.Fatalf("%s %s: %v", kind, found[0].Metadata.Name, err)
	}
	return found[0]
}

// containerPort resolves a probe's, Service's or NetworkPolicy's port (a
// number or a container port name) to a number; 0 if it names nothing.
func containerPort(c k8sContainer, p any) int {
	switch v := p.(type) {
	case int:
		return v
	case string:
		if n, err := strconv.Atoi(v); err == nil {
			return n
		}
		for _, cp := range c.Ports {
			if cp.Name == v {
				return cp.ContainerPort
			}
		}
	}
	return 0
}

func TestKubernetes(t *testing.T) {
	objs := loadManifests(t)
	var dep k8sDeployment
	depObj := one(t, objs, "Deployment", "egress", &dep)
	ns := depObj.Metadata.Namespace
	podLabels := dep.Spec.Template.Metadata.Labels
	if len(dep.Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("the Deployment has %d containers, want egress alone", len(dep.Spec.Template.Spec.Containers))
	}
	c := dep.Spec.Template.Spec.Containers[0]

	// The policy: --config names a file in a directory mounted from the
	// ConfigMap.
	configArg := flagValue(c.Args, "config")
	if configArg == "" {
		t.Fatalf("egress's args %q have no --config", c.Args)
	}
	var cmName, cmKey string
	for _, m := range c.VolumeMounts {
		if path.Dir(configArg) != path.Clean(m.MountPath) {
			continue
		}
		if m.SubPath != "" {
			t.Errorf("the policy is mounted with subPath: the kubelet never updates a subPath mount, so reload would not see edits")
		}
		if !m.ReadOnly {
			t.Errorf("the policy mount is not read-only")
		}
		for _, v := range dep.Spec.Template.Spec.Volumes {
			if v.Name == m.Name && v.ConfigMap != nil {
				cmName, cmKey = v.ConfigMap.Name, path.Base(configArg)
				for _, it := range v.ConfigMap.Items {
					if it.Path == cmKey {
						cmKey = it.Key
					}
				}
			}
		}
	}
	if cmName == "" {
		t.Fatalf("%s is not in a directory mounted from a ConfigMap", configArg)
	}
	var cm k8sConfigMap
	cmObj := one(t, objs, "ConfigMap", cmName, &cm)
	policyText, ok := cm.Data[cmKey]
	if !ok {
		t.Fatalf("ConfigMap %s has no key %q for %s", cmName, cmKey, configArg)
	}
	pol := parsePolicyFile(t, "ConfigMap "+cmName, []byte(policyText))

	t.Run("the ConfigMap's policy loads", func(t *testing.T) {
		if cmObj.Metadata.Namespace != ns {
			t.Errorf("ConfigMap in %q, Deployment in %q", cmObj.Metadata.Namespace, ns)
		}
		p := loadPolicy(t, "configmap/"+cmName+"/"+cmKey, []byte(policyText))
		if p == nil {
			return
		}
		for _, w := range p.Warnings() {
			// The admin listener is on the pod's address for the kubelet's
			// probes; egress's NetworkPolicy lets only the monitoring
			// namespace reach its port, as the warning asks.
			if strings.Contains(w.Message, "the admin listener serves /policy") {
				continue
			}
			t.Errorf("warning: %s", w)
		}
	})

	t.Run("several replicas of a non-root, read-only container", func(t *testing.T) {
		if dep.Spec.Replicas == nil || *dep.Spec.Replicas < 2 {
			t.Fatalf("replicas: want at least 2 (egress is stateless; one replica is an outage on every rollout)")
		}
		if !dep.Spec.Selector.selects(podLabels) {
			t.Errorf("the Deployment's selector %v does not select its pods %v", dep.Spec.Selector.MatchLabels, podLabels)
		}
		pod, ctr := dep.Spec.Template.Spec.SecurityContext, c.SecurityContext
		if pod.RunAsNonRoot == nil || !*pod.RunAsNonRoot || pod.RunAsUser == nil || *pod.RunAsUser == 0 {
			t.Errorf("the pod must set runAsNonRoot: true and a non-zero runAsUser")
		}
		if ctr.AllowPrivilegeEscalation == nil || *ctr.AllowPrivilegeEscalation ||
			ctr.ReadOnlyRootFilesystem == nil || !*ctr.ReadOnlyRootFilesystem ||
			len(ctr.Capabilities.Drop) != 1 || ctr.Capabilities.Drop[0] != "ALL" {
			t.Errorf("the container must forbid privilege escalation, mount its root read-only and drop ALL capabilities")
		}
	})

	admin := addrPort(t, "listen.admin", pol.Listen.Admin)
	proxy := addrPort(t, "listen.http", pol.Listen.HTTP)

	t.Run("probes ask the admin listener", func(t *testing.T) {
		if !admin.Addr().IsUnspecified() {
			t.Errorf("listen.admin %s: the kubelet probes the pod's address; use 0.0.0.0", admin)
		}
		for _, p := range []struct {
			name  string
			probe *k8sProbe
			path  string
		}{{"readiness", c.ReadinessProbe, "/readyz"}, {"liveness", c.LivenessProbe, "/healthz"}} {
			if p.probe == nil || p.probe.HTTPGet == nil {
				t.Errorf("no %s httpGet probe", p.name)
				continue
			}
			if p.probe.HTTPGet.Path != p.path || containerPort(c, p.probe.HTTPGet.Port) != int(admin.Port()) {
				t.Errorf("%s probe asks %s on port %v, want %s on the admin port %d",
					p.name, p.probe.HTTPGet.Path, p.probe.HTTPGet.Port, p.path, admin.Port())
			}
		}
	})

	t.Run("the Service sends to the proxy port of these pods", func(t *testing.T) {
		var svc k8sService
		svcObj := one(t, objs, "Service", "", &svc)
		if svcObj.Metadata.Namespace != ns {
			t.Errorf("Service in %q, Deployment in %q", svcObj.Metadata.Namespace, ns)
		}
		if !(&k8sSelector{MatchLabels: svc.Spec.Selector}).selects(podLabels) {
			t.Errorf("the Service's selector %v does not select the pods %v", svc.Spec.Selector, podLabels)
		}
		if !proxy.Addr().IsUnspecified() {
			t.Errorf("listen.http %s: the Service reaches the pod's address; use 0.0.0.0", proxy)
		}
		if len(svc.Spec.Ports) != 1 || containerPort(c, svc.Spec.Ports[0].TargetPort) != int(proxy.Port()) {
			t.Errorf("the Service's ports %+v, want one whose targetPort is listen.http's %d", svc.Spec.Ports, proxy.Port())
		}
		for _, cp := range c.Ports {
			if cp.ContainerPort != int(proxy.Port()) && cp.ContainerPort != int(admin.Port()) {
				t.Errorf("container port %d is neither listen.http nor listen.admin", cp.ContainerPort)
			}
		}
	})

	t.Run("the PodDisruptionBudget keeps one proxy up", func(t *testing.T) {
		var pdb k8sPDB
		pdbObj := one(t, objs, "PodDisruptionBudget", "", &pdb)
		if pdbObj.Metadata.Namespace != ns || !pdb.Spec.Selector.selects(podLabels) {
			t.Errorf("the PodDisruptionBudget does not select the egress pods")
		}
		replicas := 0
		if dep.Spec.Replicas != nil {
			replicas = *dep.Spec.Replicas
		}
		if n, ok := pdb.Spec.MinAvailable.(int); !ok || n < 1 || n >= replicas {
			t.Errorf("minAvailable %v: want at least 1 and fewer than the %d replicas, so that a node can drain", pdb.Spec.MinAvailable, replicas)
		}
	})

	t.Run("the grace period outlasts the drain of open tunnels", func(t *testing.T) {
		drain, err := time.ParseDuration(pol.Timeouts.Drain)
		if err != nil {
			t.Fatal(err)
		}
		g := dep.Spec.Template.Spec.TerminationGracePeriodSeconds
		if g == nil || time.Duration(*g)*time.Second <= drain {
			t.Errorf("terminationGracePeriodSeconds %v does not outlast timeouts.drain %v", g, drain)
		}
	})

	// The network policies: one on the egress pods, one on the plugins.
	var egressNP, pluginNP k8sNetworkPolicy
	var pluginNPObj k8sObject
	var npCount int
	for _, o := range objs {
		if o.Kind != "NetworkPolicy" {
			continue
		}
		npCount++
		var np k8sNetworkPolicy
		if err := o.node.Decode(&np); err != nil {
			t.Fatal(err)
		}
		if o.Metadata.Namespace == ns && np.Spec.PodSelector.selects(podLabels) {
			egressNP = np
		} else {
			pluginNP, pluginNPObj = np, o
		}
	}
	if npCount != 2 {
		t.Fatalf("want 2 NetworkPolicies (egress's and the plugins'), have %d", npCount)
	}
	namespaces := map[string]map[string]string{}
	for _, o := range objs {
		if o.Kind == "Namespace" {
			labels := map[string]string{"kubernetes.io/metadata.name": o.Metadata.Name}
			for k, v := range o.Metadata.Labels {
				labels[k] = v
			}
			namespaces[o.Metadata.Name] = labels
		}
	}
	// isEgress reports whether a peer selects exactly the egress pods.
	isEgress := func(p k8sPeer) bool {
		return p.IPBlock == nil && p.PodSelector.selects(podLabels) &&
			(p.NamespaceSelector == nil && pluginNPObj.Metadata.Namespace == ns ||
				p.NamespaceSelector.selects(namespaces[ns]))
	}
	isClusterDNS := func(p k8sPeer, ports []k8sPort) bool {
		if p.IPBlock != nil || p.NamespaceSelector == nil || p.NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"] != "kube-system" ||
			p.PodSelector == nil || p.PodSelector.MatchLabels["k8s-app"] != "kube-dns" || len(ports) == 0 {
			return false
		}
		for _, pt := range ports {
			if pt.Port != 53 {
				return false
			}
		}
		return true
	}

	t.Run("plugin pods reach egress's proxy port and nothing else", func(t *testing.T) {
		if len(pluginNP.Spec.PodSelector.MatchLabels) == 0 {
			t.Fatal("the plugins' NetworkPolicy selects no pods by label")
		}
		if !contains(pluginNP.Spec.PolicyTypes, "Egress") {
			t.Errorf("the plugins' NetworkPolicy does not restrict Egress")
		}
		if _, ok := namespaces[pluginNPObj.Metadata.Namespace]; !ok {
			t.Errorf("the plugins' namespace %q is not created by the manifests", pluginNPObj.Metadata.Namespace)
		}
		var toEgress bool
		for _, rule := range pluginNP.Spec.Egress {
			if len(rule.To) == 0 {
				t.Errorf("an egress rule with no 'to' lets plugin pods reach anything")
			}
			for _, peer := range rule.To {
				switch {
				case isEgress(peer):
					toEgress = true
					if len(rule.Ports) != 1 || containerPort(c, rule.Ports[0].Port) != int(proxy.Port()) {
						t.Errorf("plugins may reach egress on %+v, want only listen.http's port %d", rule.Ports, proxy.Port())
					}
				case isClusterDNS(peer, rule.Ports):
				default:
					t.Errorf("plugins may reach %s, which is neither egress nor the cluster DNS", peerString(peer))
				}
			}
		}
		if !toEgress {
			t.Errorf("the plugins' NetworkPolicy does not let them reach egress")
		}
	})

	t.Run("egress accepts plugin pods on the proxy port and reaches the world", func(t *testing.T) {
		pluginNS := namespaces[pluginNPObj.Metadata.Namespace]
		var fromPlugins bool
		for _, rule := range egressNP.Spec.Ingress {
			for _, peer := range rule.From {
				if peer.NamespaceSelector.selects(pluginNS) && peer.PodSelector.selects(pluginNP.Spec.PodSelector.MatchLabels) {
					fromPlugins = true
					for _, pt := range rule.Ports {
						if containerPort(c, pt.Port) != int(proxy.Port()) {
							t.Errorf("plugin pods may reach egress on port %v, not only the proxy", pt.Port)
						}
					}
				}
			}
		}
		if !fromPlugins {
			t.Errorf("egress's NetworkPolicy does not admit the plugin pods")
		}
		if contains(egressNP.Spec.PolicyTypes, "Egress") {
			if len(egressNP.Spec.Egress) != 1 || len(egressNP.Spec.Egress[0].To) != 0 || len(egressNP.Spec.Egress[0].Ports) != 0 {
				t.Errorf("egress's own egress is limited: the policy file, not the NetworkPolicy, decides where egress goes")
			}
		}
	})

	t.Run("the policy admits pod addresses", func(t *testing.T) {
		if len(pol.AllowFrom) == 0 {
			t.Fatal("allow_from is empty: egress would serve any client that reaches it")
		}
		for _, s := range pol.AllowFrom {
			p, err := netip.ParsePrefix(s)
			if err != nil || !p.Addr().IsPrivate() && !netip.MustParsePrefix("100.64.0.0/10").Contains(p.Addr()) {
				t.Errorf("allow_from %q is not a private range pods live in", s)
			}
		}
	})
}

func peerString(p k8sPeer) string {
	var parts []string
	if p.NamespaceSelector != nil {
		parts = append(parts, fmt.Sprintf("namespaceSelector %v", p.NamespaceSelector.MatchLabels))
	}
	if p.PodSelector != nil {
		parts = append(parts, fmt.Sprintf("podSelector %v", p.PodSelector.MatchLabels))
	}
	if p.IPBlock != nil {
		parts = append(parts, "ipBlock "+p.IPBlock.CIDR)
	}
	return "{" + strings.Join(parts, ", ") + "}"
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}
