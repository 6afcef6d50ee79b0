package runner

import (
	"fmt"
	"slices"
	"strings"

	"github.com/votr-dev/votr/plan"
)

// StateRm forgets regions by id: their records and those of the slots in
// their databases leave the state, so that destroy no longer looks for
// them. For a server gone for good; nothing on any server is touched. It
// holds the apply lock like apply and destroy.
func (r *Runner) StateRm(ids []int) error {
	changed := false
	_, release, err := r.lockUntilDone(&changed)
	if err != nil {
		return err
	}
	defer release()
	st, err := r.loadState()
	if err != nil {
		return err
	}
	var gone, unknown []string
	for _, id := range ids {
		found := false
		for _, sr := range st.Regions {
			if sr.ID != id {
				continue
			}
			found = true
			gone = append(gone, fmt.Sprintf("region %d (database %s)", id, plan.On(sr.Database, sr.Server)))
			st.Slots = slices.DeleteFunc(st.Slots, func(v StateSlot) bool { return v.Server == sr.Server && v.Database == sr.Database })
		}
		if !found {
			unknown = append(unknown, fmt.Sprint(id))
		}
	}
	if len(unknown) > 0 {
		var have []string
		for _, sr := range st.Regions {
			have = append(have, fmt.Sprint(sr.ID))
		}
		return fmt.Errorf("region %s is not recorded in %s (recorded: %s); nothing was forgotten", strings.Join(unknown, ", "), r.statePath(), strings.Join(have, ", "))
	}
	st.Regions = slices.DeleteFunc(st.Regions, func(sr StateRegion) bool { return slices.Contains(ids, sr.ID) })
	changed = true
	if len(st.Regions) == 0 && len(st.Servers) == 0 {
		err = r.removeState()
	} else {
		err = r.saveState(st)
	}
	if err != nil {
		return err
	}
	for _, g := range gone {
		fmt.Fprintf(r.opts.Out, "Forgot %s: nothing on its server was touched.\n", g)
	}
	return nil
}
