// The blend's two roles, as plotarmour/roles.py declares them (a test holds the two to each
// other): the name the API and the token events use, what the slider calls that end, and
// the family of the model shipped in it. Plain JSON, like presets.js, so Python can read it.
export const ROLES = {
  "gpt2": {"label": "creativity", "family": "GPT-2"},
  "bdh": {"label": "logic", "family": "BDH"}
};

/** A role's model by its family ("BDH"); an unknown role as it came. */
export const family = (role) => (ROLES[role] ? ROLES[role].family : role);

/** How a message to a person names a role's model: "the logic model (BDH)". */
export const words = (role) => (ROLES[role] ? `the ${ROLES[role].label} model (${ROLES[role].family})` : role);

/** [role, family] in the order the gateway asks them: gpt2, bdh. */
export const FAMILIES = Object.entries(ROLES).map(([role, r]) => [role, r.family]);
