package daemon

// crashpoint is called at the agent's, the installer's and the
// controller's step boundaries. The product leaves it nil; the
// klp_crashpoint build tag (the real-kernel power-cut tests) sets it.
var crashpoint func(step string)
