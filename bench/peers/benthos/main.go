// Command benthos-peer is Benthos v4.24.0 with only the components the
// backlog-drain benchmark needs (pure processors, mqtt, kafka), so that it
// builds faster and carries less than the full distribution. It is the stock
// Benthos CLI: run it as `benthos-peer -c <config>.yaml`.
package main

import (
	"context"

	"github.com/benthosdev/benthos/v4/public/service"

	_ "github.com/benthosdev/benthos/v4/public/components/kafka"
	_ "github.com/benthosdev/benthos/v4/public/components/mqtt"
	_ "github.com/benthosdev/benthos/v4/public/components/pure"
)

func main() {
	service.RunCLI(context.Background())
}
