package sender_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/zsend/zsend/receiver"
	"github.com/zsend/zsend/sender"
)

// Serve a directory until the context ends, watching what is sent.
func ExampleListen() {
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	os.MkdirAll(filepath.Join(dir, "conf", "app"), 0o755)
	os.WriteFile(filepath.Join(dir, "conf", "app", "app.conf"), []byte("port = 8080\n"), 0o644)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sent := make(chan string, 1)
	srv, err := sender.Listen(ctx, sender.Config{
		Endpoint: "tcp://127.0.0.1:0",
		Paths:    []string{filepath.Join(dir, "conf")},
		Events: func(e sender.Event) {
			if e.Kind == "file-sent" {
				sent <- fmt.Sprintf("sent %s, %d bytes", e.Name, e.Size)
			}
		},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	serving := make(chan error, 1)
	go func() { serving <- srv.Serve(ctx) }()

	out, _ := os.MkdirTemp("", "example-out")
	defer os.RemoveAll(out)
	if _, err := receiver.Fetch(ctx, receiver.Config{Endpoint: srv.Endpoint(), OutputDir: out}, "conf/app/app.conf"); err != nil {
		fmt.Println(err)
	}
	fmt.Println(<-sent)
	b, _ := os.ReadFile(filepath.Join(out, "conf", "app", "app.conf"))
	fmt.Print(string(b))

	cancel() // Serve tells connected receivers it is going away, then returns
	fmt.Println("serve returned:", <-serving)
	// Output:
	// sent conf/app/app.conf, 12 bytes
	// port = 8080
	// serve returned: <nil>
}
