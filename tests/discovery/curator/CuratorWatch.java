import java.util.ArrayList;
import java.util.Collection;
import java.util.List;

import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.retry.RetryForever;
import org.apache.curator.x.discovery.ServiceDiscovery;
import org.apache.curator.x.discovery.ServiceDiscoveryBuilder;
import org.apache.curator.x.discovery.ServiceInstance;
import org.apache.curator.x.discovery.ServiceProvider;
import org.apache.curator.x.discovery.details.JsonInstanceSerializer;

/**
 * A Curator service-discovery client as Java applications use one: a ServiceProvider (backed by Curator's
 * ServiceCache, which drops disabled instances) for one service. Prints "ready", then one line
 * "instances [json,...]" each time the set it returns changes, every instance as Curator re-serializes what
 * it read (all ten fields), sorted by id. Runs until killed.
 *
 * Usage: java CuratorWatch CONNECT_STRING BASE_PATH SERVICE
 */
public final class CuratorWatch {
    public static void main(String[] args) throws Exception {
        CuratorFramework client = CuratorFrameworkFactory.newClient(args[0], new RetryForever(100));
        client.start();
        JsonInstanceSerializer<Void> serializer = new JsonInstanceSerializer<>(Void.class, false);
        ServiceDiscovery<Void> discovery = ServiceDiscoveryBuilder.builder(Void.class).client(client)
                .basePath(args[1]).serializer(new JsonInstanceSerializer<>(Void.class)).build();
        discovery.start();
        ServiceProvider<Void> provider = discovery.serviceProviderBuilder().serviceName(args[2]).build();
        provider.start();
        System.out.println("ready");
        System.out.flush();
        String last = null;
        while (true) {
            Collection<ServiceInstance<Void>> instances = provider.getAllInstances();
            List<String> lines = new ArrayList<>();
            for (ServiceInstance<Void> instance : instances) {
                lines.add(new String(serializer.serialize(instance), "UTF-8"));
            }
            lines.sort(null);
            String line = "instances [" + String.join(",", lines) + "]";
            if (!line.equals(last)) {
                System.out.println(line);
                System.out.flush();
                last = line;
            }
            Thread.sleep(50);
        }
    }
}
